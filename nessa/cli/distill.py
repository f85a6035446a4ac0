"""``nessa distill``: distil a stored dataset into synthetic stages, locally or as a job on a storage daemon."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from nessa.cli.options import Command, UsageError, option_pair

__all__ = ["COMMANDS"]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_local(args: argparse.Namespace) -> int:
    from nessa.distill import distill
    from nessa.distill.store import load_arrays, write_distilled
    from nessa.errors import NotFoundError

    src = Path(args.source)
    if not (src / "manifest.json").is_file():
        raise NotFoundError(f"{src} is not a stored dataset (no manifest.json); ingest it first with `nessa ingest`")
    dest = Path(args.dest).resolve()
    outputs = [dest] + [dest.with_name(f"{dest.name}-s{i}") for i in range(1, args.stages + 1)]
    if src.resolve() in outputs:
        raise UsageError(f"DEST {args.dest} would replace the dataset being distilled; choose another DEST")
    x, y, manifest = load_arrays(src)
    last = [0.0]

    def progress(done: int, total: int, what: str) -> None:
        now = time.monotonic()
        if not args.quiet and (now - last[0] > 2.0 or done == total):
            last[0] = now
            _say(f"distill: {what}: {100 * done / max(total, 1):.0f}%")

    t0 = time.monotonic()
    result = distill(
        x,
        y,
        method=args.method,
        ipc=args.ipc,
        stages=args.stages,
        seed=args.seed,
        options=dict(args.option or []),
        progress=progress,
    )
    seconds = time.monotonic() - t0
    paths = write_distilled(
        result,
        args.dest,
        distilled_from=manifest.name,
        class_names=list(manifest.class_names),
        overwrite=args.overwrite,
        extra={"seconds": round(seconds, 3), "real_bytes_read": int(manifest.total_bytes)},
    )
    lrs = ", ".join(f"{s.lr:.4g}" for s in result.stages)
    print(
        f"{paths[0]}: {len(result.stages)} stage(s) of {result.ipc_per_stage} per class by {args.method} "
        f"in {seconds:.1f} s; learned lr per stage: {lrs}"
    )
    for p in paths[1:]:
        print(f"  {p}")
    return 0


def _run_remote(args: argparse.Namespace) -> int:
    import os

    from nessa.cli.connect import connect, normalize_target
    from nessa.errors import FailedPreconditionError

    token = args.token or os.environ.get("NESSA_TOKEN") or None
    with connect(normalize_target(args.target), token, args.tls_ca, say=_say) as client:
        if args.job:
            job = client.cancel_distill(args.job) if args.cancel else client.distill_job(args.job)
            if args.cancel:
                _say(f"distill: asked job {job.id} to stop")
            if args.no_wait or args.cancel:
                print(
                    f"{job.id}: {job.state}, {job.phase}, {100 * job.progress:.0f}%"
                    + (f": {job.error}" if job.error else "")
                )
                return 0
        else:
            job = client.distill(
                args.dataset,
                method=args.method,
                ipc=args.ipc,
                stages=args.stages,
                seed=args.seed,
                output=args.dest or "",
                options=dict(args.option or []),
                overwrite=args.overwrite,
            )
        if args.no_wait:
            print(job.id)
            return 0
        _say(f"distill: job {job.id} running on {args.target}")
        last = [0.0]

        def show(j: Any) -> None:
            now = time.monotonic()
            if not args.quiet and now - last[0] > 2.0:
                last[0] = now
                _say(f"distill: {j.stage_text}: {100 * j.progress:.0f}%")

        job = client.wait_distill(job.id, on_progress=show)
    if job.state == "cancelled":
        raise FailedPreconditionError(f"distillation job {job.id} was cancelled: {job.error}")
    if job.state != "done":
        raise RuntimeError(f"distillation job {job.id} {job.state}: {job.error}")
    lrs = ", ".join(f"{v:.4g}" for v in job.learned_lr)
    print(
        f"{job.output}: {len(job.stages)} stage(s) by {job.method} in {job.seconds:.1f} s on the daemon "
        f"(read {job.real_bytes_read} real bytes there, wrote {job.synthetic_bytes_written} synthetic bytes); "
        f"learned lr per stage: {lrs}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.cancel and not args.job:
        raise UsageError("--cancel needs --job ID (the id `nessa distill --target ... --no-wait` printed)")
    if args.target:
        if args.source or (not args.dataset and not args.job) or (args.dataset and args.job):
            raise UsageError(
                "with --target, give --dataset NAME to start a job or --job ID to follow one (and no SOURCE path)"
            )
        args.dest = args.dest_flag
        return _run_remote(args)
    if args.dataset or args.job or args.cancel:
        raise UsageError(
            "--dataset and --job need --target ADDR (a daemon); for a local dataset give SOURCE DEST paths"
        )
    if not args.source or not args.dest:
        raise UsageError("give SOURCE DEST (dataset directories), or --target ADDR --dataset NAME for a daemon job")
    return _run_local(args)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="local: the stored dataset to distil (a directory)")
    p.add_argument("dest", nargs="?", help="local: the group dataset to write (stages go to DEST-s1 ...)")
    p.add_argument("--method", choices=("pdd", "mtt", "dm"), default="pdd", help="distillation method (default pdd)")
    p.add_argument("--ipc", type=int, default=10, help="synthetic samples per class in total (default 10)")
    p.add_argument("--stages", type=int, default=None, help="PDD stages (default 5 for pdd, 1 otherwise)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--option",
        action="append",
        type=option_pair,
        metavar="KEY=VALUE",
        help="distillation option, e.g. iterations=300 (repeatable; see docs/distillation.md)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing group and its stages")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--target", default=None, help="run as a job on this daemon (HOST[:PORT])")
    p.add_argument("--dataset", default=None, help="with --target: the daemon's dataset to distil")
    p.add_argument(
        "--out",
        dest="dest_flag",
        default=None,
        help="with --target: the group's name on the daemon (default DATASET-METHOD)",
    )
    p.add_argument("--no-wait", action="store_true", help="with --target: print the job id (or state) and return")
    p.add_argument("--job", default=None, metavar="ID", help="with --target: follow this job (instead of --dataset)")
    p.add_argument("--cancel", action="store_true", help="with --job: ask the job to stop (nothing is published)")
    p.add_argument("--token", default=None, help="bearer token (default: $NESSA_TOKEN)")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="the CA of the daemon's certificate (TLS)")


def _run_checked(args: argparse.Namespace) -> int:
    if args.stages is None:
        args.stages = 5 if args.method == "pdd" else 1
    return _run(args)


COMMANDS = {
    "distill": Command(
        help="distil a dataset into a few synthetic samples per class (PDD, MTT or DM), locally or on a daemon",
        description="Distil a stored dataset into synthetic stages. Locally: `nessa distill SOURCE DEST` writes "
        "DEST (the group: all stages, its manifest lists them with their learned lrs) and DEST-s1 ... DEST-sP, "
        "published together. On a daemon: `nessa distill --target ADDR --dataset NAME` runs a Distill job next to "
        "the data; only the synthetic stages are ever streamed. Train on them with `nessa train --plan progressive`.",
        add=_add,
        run=_run_checked,
    ),
}
