"""Pin a process to a set of CPUs, with torch's and PoCL's thread counts matched to it.

A storage node and a GPU node do not share cores; on one machine ``nessa demo`` emulates that by giving the daemon
and the trainer disjoint CPU sets (``nessa serve --cpus``, ``nessa train --cpus``). Call :func:`place` before
OpenCL or torch start their thread pools (PoCL reads its thread count when its platform is first used).
"""

from __future__ import annotations

import os

from nessa.errors import InvalidArgumentError

__all__ = ["available_cpus", "parse_cpus", "place", "split_cpus"]


def available_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def parse_cpus(spec: str) -> list[int]:
    """``"0-3,6"`` → ``[0, 1, 2, 3, 6]`` (each CPU must be available to this process)."""
    cpus: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise InvalidArgumentError(f"--cpus {spec!r}: give CPU numbers and ranges, e.g. '0' or '0-3,6'") from None
        if first < 0 or last < first:
            raise InvalidArgumentError(f"--cpus {spec!r}: bad range {part!r}")
        cpus.update(range(first, last + 1))
    allowed = set(available_cpus())
    if not cpus or not cpus <= allowed:
        raise InvalidArgumentError(
            f"--cpus {spec!r}: this process may use CPUs {format_cpus(sorted(allowed))}; choose among them"
        )
    return sorted(cpus)


def format_cpus(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``."""
    out: list[str] = []
    for c in sorted(cpus):
        if out and "-" not in out[-1] and int(out[-1]) == c - 1:
            out[-1] = f"{out[-1]}-{c}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == c - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def split_cpus(cpus: list[int] | None = None) -> tuple[list[int], list[int]] | None:
    """Two disjoint halves (storage node, trainer node) of ``cpus``; ``None`` with fewer than two CPUs."""
    cpus = sorted(cpus if cpus is not None else available_cpus())
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


def place(spec: str, *, torch_threads: bool = True) -> str:
    """Pin this process to the CPUs of ``spec`` ("" leaves it alone); returns a line saying where it runs."""
    if not spec:
        return f"CPUs {format_cpus(available_cpus())} (not pinned)"
    cpus = parse_cpus(spec)
    os.sched_setaffinity(0, cpus)
    n = str(len(cpus))
    os.environ["POCL_CPU_MAX_CU_COUNT"] = n  # PoCL 3.x's pthread device
    os.environ["POCL_MAX_PTHREAD_COUNT"] = n  # older PoCL
    os.environ.setdefault("OMP_NUM_THREADS", n)
    if torch_threads:
        import torch

        torch.set_num_threads(len(cpus))
    return f"CPUs {format_cpus(cpus)} (pinned, {n} thread{'s' if len(cpus) > 1 else ''})"
