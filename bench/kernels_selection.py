"""Selection kernels (OpenCL on the configured platform, PoCL by default) against their numpy references.

Prints one row per kernel and size: median seconds of each side (``--repeats`` runs, measured alternately in the
same process), the work rate (GFLOP/s for distance blocks, GB/s of similarity block read for facility-location
gains) and the speed ratio OpenCL / numpy. The numpy side is :mod:`nessa.accel.reference.selection` (float64
internally, the test oracle); the FL-gain rows compare the two backends' ``FacilityLocationBlock.gains``.

    python bench/kernels_selection.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from nessa.accel import selection_ops as cl_ops
from nessa.accel.reference import selection as ref


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: program build, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pair(name: str, size: str, work: float, unit: str, ocl: Callable[[], Any], npy: Callable[[], Any],
          repeats: int) -> dict[str, Any]:  # fmt: skip
    t_cl = _median_seconds(ocl, repeats)
    t_np = _median_seconds(npy, repeats)
    return {
        "kernel": name,
        "size": size,
        "opencl_s": t_cl,
        "numpy_s": t_np,
        "unit": unit,
        "opencl_rate": work / t_cl,
        "numpy_rate": work / t_np,
        "speedup": t_np / t_cl,
    }


#: Kernel families :func:`rows` measures, in print order.
FAMILIES = ("pairwise", "assign", "fl", "cross_cov", "topk")


def rows(repeats: int = 5, families: Collection[str] = FAMILIES, quick: bool = False) -> list[dict[str, Any]]:
    """Measure kernels against their numpy references; one dict per (kernel, size).

    Args:
        repeats: timed runs per side (median reported).
        families: which of :data:`FAMILIES` to measure.
        quick: smaller sizes (a smoke run).
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown kernel families {sorted(unknown)}; choose from {FAMILIES}")
    rng = np.random.default_rng(0)
    out: list[dict[str, Any]] = []
    big = 1000 if quick else 5000
    pair_sizes = ((big, big, 10), (big, big, 512), (37, 53, 129)) if "pairwise" in families else ()
    for m, n, d in pair_sizes:
        a = rng.standard_normal((m, d)).astype(np.float32)
        b = rng.standard_normal((n, d)).astype(np.float32)
        flops = 3.0 * m * n * d / 1e9  # sub, mul, add per element pair and feature
        for variant in ("blocked", "tiled"):
            os.environ[cl_ops.ENV_PAIRWISE] = variant
            out.append(_pair(f"pairwise_sq_dists[{variant}]", f"{m}x{n}x{d}", flops, "GFLOP/s",
                             lambda a=a, b=b: cl_ops.pairwise_sq_dists(a, b),
                             lambda a=a, b=b: ref.pairwise_sq_dists(a, b), repeats))  # fmt: skip
        os.environ.pop(cl_ops.ENV_PAIRWISE, None)
        out.append(_pair("similarity[max_minus_dist]", f"{m}x{n}x{d}", flops, "GFLOP/s",
                         lambda a=a, b=b: cl_ops.similarity(a, b), lambda a=a, b=b: ref.similarity(a, b),
                         repeats))  # fmt: skip
    assign_sizes = ((10_000, 10, 100), (2_000, 64, 100)) if quick else ((100_000, 10, 1000), (20_000, 64, 100))
    for n, d, k in assign_sizes if "assign" in families else ():
        x = rng.standard_normal((n, d)).astype(np.float32)
        c = rng.standard_normal((k, d)).astype(np.float32)
        flops = 3.0 * n * k * d / 1e9
        out.append(_pair("nearest_selected (fused)", f"{n}x{k}x{d}", flops, "GFLOP/s",
                         lambda x=x, c=c: cl_ops.nearest_selected(x, c, "max_minus_dist", 100.0),
                         lambda x=x, c=c: ref.nearest_selected(x, c, "max_minus_dist", 100.0), repeats))  # fmt: skip
        out.append(_pair("kmeans_assign (fused)", f"{n}x{k}x{d}", flops, "GFLOP/s",
                         lambda x=x, c=c: cl_ops.kmeans_assign(x, c), lambda x=x, c=c: ref.kmeans_assign(x, c),
                         repeats))  # fmt: skip
    for n, d in (((1000, 10), (2000, 10)) if quick else ((5000, 10), (10_000, 10))) if "fl" in families else ():
        x = rng.standard_normal((n, d)).astype(np.float32)
        blocks = [ops.FacilityLocationBlock(x) for ops in (cl_ops, ref)]
        for blk in blocks:
            for j in range(0, n, n // 50):
                blk.add(j)
        ids = np.arange(n)
        gbytes = 4.0 * n * n / 1e9
        out.append(_pair("fl_gains (all candidates)", f"{n}x{n}", gbytes, "GB/s",
                         lambda b=blocks, i=ids: b[0].gains(i), lambda b=blocks, i=ids: b[1].gains(i),
                         repeats))  # fmt: skip
        few = ids[:16]
        out.append(_pair("fl_gains (16 candidates)", f"16x{n}", 16 * 4.0 * n / 1e9, "GB/s",
                         lambda b=blocks, i=few: b[0].gains(i), lambda b=blocks, i=few: b[1].gains(i),
                         repeats))  # fmt: skip
        for blk in blocks:
            blk.close()
    if "cross_cov" in families:
        rows_n = 20_000 if quick else 200_000
        a = rng.standard_normal((rows_n, 32)).astype(np.float32)
        b = rng.standard_normal((rows_n, 16)).astype(np.float32)
        out.append(_pair("cross_covariance (centered)", f"{rows_n}x32x16", 2.0 * rows_n * 32 * 16 / 1e9, "GFLOP/s",
                         lambda: cl_ops.cross_covariance(a, b, True), lambda: ref.cross_covariance(a, b, True),
                         repeats))  # fmt: skip
    if "topk" in families:
        count = 100_000 if quick else 1_000_000
        scores = rng.standard_normal(count).astype(np.float32)
        groups = rng.integers(0, 10, count)
        out.append(_pair("group_topk (k=1000/group)", f"{count:.0e} x 10 groups", 4.0 * count / 1e9, "GB/s",
                         lambda: cl_ops.group_topk(scores, groups, 1000), lambda: ref.group_topk(scores, groups, 1000),
                         repeats))  # fmt: skip
    return out


def main() -> None:
    """Print the kernel table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    from nessa.accel import get_runtime

    print(f"device: {get_runtime().name}")
    header = (
        f"{'kernel':<30} {'size':<16} {'OpenCL s':>10} {'numpy s':>10} {'OpenCL rate':>14} {'numpy rate':>14}  ratio"
    )
    print(header)
    print("-" * len(header))
    for r in rows(args.repeats, quick=args.quick):
        print(f"{r['kernel']:<30} {r['size']:<16} {r['opencl_s']:>10.4f} {r['numpy_s']:>10.4f} "
              f"{r['opencl_rate']:>8.1f} {r['unit']:<5} {r['numpy_rate']:>8.1f} {r['unit']:<5} "
              f"{r['speedup']:5.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
