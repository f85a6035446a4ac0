"""OpenCL selection ops: the kernels of ``fpga_kernels/selection.cl`` behind numpy-in, numpy-out functions.

Every function has the same name, signature and semantics as its numpy reference in
:mod:`nessa.accel.reference.selection` (the test oracle); :func:`get_ops` picks one of the two by name. Inputs are
validated on the host before anything is launched (empty inputs, mismatched dimensions, NaN/Inf →
:class:`~nessa.errors.InvalidArgumentError`). An OpenCL failure raises; there is no silent fallback to numpy.

Facility location (:class:`FacilityLocationBlock`): the (m, n) block of *values* (distances for CRAIG's
M − ‖·‖, exp(−‖·‖/D), or cosines) is computed once by the tiled ``sel_pairwise`` kernel and stays on the device
across greedy steps, together with the per-element best similarity and nearest pick. ``gains`` uploads only the
candidate ids and reads back one float per candidate; ``add`` launches one coverage-update kernel and reads nothing;
``lazy_greedy`` / ``stochastic_greedy`` make all k picks in one single-work-item launch (no host round trip per pick,
which on PoCL costs far more than a gain evaluation).
Distances are taken between rows shifted by the mean of the block's rows (:func:`distance_center`), so that the
register-blocked kernel's ‖a‖² + ‖b‖² − 2a·b stays precise in float32 where rows cluster far from the origin (an
untrained model's gradients); the numpy reference centers the same way, in float64.
The similarity transform (M − d, the threshold) is applied on the fly inside those kernels, so CRAIG's M, which is
the block's max distance and so known only after the block pass, costs no second pass. Memory is m·n·4 bytes per
block; :func:`nessa.selection.facility_location.maximize` keeps m, n ≤ ``block_size`` (GreeDi above it), and
the fused ``sel_argmax_sim`` kernel assigns any number of elements to a chosen set without an n×k matrix.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
import pyopencl as cl

from nessa.accel.reference import selection as _ref
from nessa.accel.reference.selection import (
    SIMILARITY_KINDS,
    check_features,
    check_kind,
    check_pair,
    normalize_topk_budget,
    resolve_param,
)
from nessa.accel.runtime import OpenCLRuntime, get_runtime, round_up
from nessa.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError

__all__ = [
    "SIMILARITY_KINDS",
    "FacilityLocationBlock",
    "cosine_similarity",
    "cross_covariance",
    "distance_center",
    "get_ops",
    "group_topk",
    "kmeans_assign",
    "nearest_selected",
    "pairwise_kernel_variant",
    "pairwise_sq_dists",
    "release_scratch",
    "similarity",
]

SOURCE = "selection"
TS = 16  # SEL_TS in selection.cl
GL = 64  # SEL_GL in selection.cl
RB = 8  # SEL_RB in selection.cl
CB = 2  # SEL_CB in selection.cl
PANEL = 16  # columns of a B panel of sel_pairwise (one float16)
ENV_PAIRWISE = "NESSA_SEL_PAIRWISE"
MODE_SQDIST, MODE_DIST, MODE_EXP, MODE_DOT = 0, 1, 2, 3
_MF = cl.mem_flags
_NEG_INF = np.float32(-np.inf)


def get_ops(backend: str) -> ModuleType:
    """The selection ops of a backend: ``"opencl"`` (this module) or ``"numpy"`` (the reference).

    Raises:
        InvalidArgumentError: any other name.
    """
    if backend == "opencl":
        return sys.modules[__name__]
    if backend == "numpy":
        return _ref
    raise InvalidArgumentError(f"unknown backend {backend!r}; use 'opencl' or 'numpy'")


# ------------------------------------------------------------------------------------------------ helpers
def _rt() -> OpenCLRuntime:
    return get_runtime()


def _kernel(name: str) -> cl.Kernel:
    return _rt().kernel(SOURCE, name)


def _to_device(rt: OpenCLRuntime, arr: np.ndarray) -> cl.Buffer:
    arr = np.ascontiguousarray(arr)
    if arr.nbytes == 0:
        return cl.Buffer(rt.context, _MF.READ_WRITE, 4)
    return cl.Buffer(rt.context, _MF.READ_ONLY | _MF.COPY_HOST_PTR, hostbuf=arr)


def _empty(rt: OpenCLRuntime, nbytes: int) -> cl.Buffer:
    limit = int(rt.device.max_mem_alloc_size)
    if nbytes > limit:
        raise ResourceExhaustedError(
            f"an OpenCL buffer of {nbytes / 2**20:.0f} MiB exceeds the device's max allocation of "
            f"{limit / 2**20:.0f} MiB; use a smaller block_size (or fewer rows per call)"
        )
    return cl.Buffer(rt.context, _MF.READ_WRITE, max(int(nbytes), 4))


_scratch = threading.local()


def _checkout(rt: OpenCLRuntime, nbytes: int) -> cl.Buffer:
    """A buffer of at least ``nbytes``: this thread's parked block buffer if it fits (≤ 4× too big), else a new one.

    Reusing one buffer across the many blocks of a GreeDi run avoids allocating (and page-faulting) hundreds of MB
    per block; :func:`release_scratch` frees the parked buffer.
    """
    parked: cl.Buffer | None = getattr(_scratch, "buffer", None)
    if parked is not None and nbytes <= parked.size <= 4 * max(nbytes, 1 << 20):
        _scratch.buffer = None
        return parked
    return _empty(rt, nbytes)


def _checkin(buf: cl.Buffer) -> None:
    """Park ``buf`` for reuse by this thread (the larger of it and the parked one is kept)."""
    parked: cl.Buffer | None = getattr(_scratch, "buffer", None)
    spare: cl.Buffer | None = buf
    if parked is None or parked.size < buf.size:
        _scratch.buffer = buf
        spare = parked
    if spare is not None:
        spare.release()


def release_scratch() -> None:
    """Free this thread's parked similarity-block buffer (see :class:`FacilityLocationBlock`)."""
    parked: cl.Buffer | None = getattr(_scratch, "buffer", None)
    _scratch.buffer = None
    if parked is not None:
        parked.release()


def _read(queue: cl.CommandQueue, buf: cl.Buffer, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    if out.nbytes:
        cl.enqueue_copy(queue, out, buf, is_blocking=True)
    return out


def _transform_of(kind: str, param: float | None) -> tuple[int, float, float, float]:
    """(mode, kernel param, offset, sign) for a similarity kind with its resolved parameter."""
    if kind == "max_minus_dist":
        return MODE_DIST, 0.0, float(param if param is not None else 0.0), -1.0
    if kind == "exp":
        return MODE_EXP, float(param if param is not None else 1.0), 0.0, 1.0
    return MODE_DOT, 0.0, 0.0, 1.0


def _normalized(rt: OpenCLRuntime, buf: cl.Buffer, n: int, d: int) -> cl.Buffer:
    out = _empty(rt, n * d * 4)
    _kernel("sel_normalize_rows")(rt.queue, (round_up(n, GL),), (GL,), buf, out, np.int32(n), np.int32(d))
    return out


def pairwise_kernel_variant() -> str:
    """Which pairwise-block kernel runs: ``"blocked"`` (register-blocked, CPU/GPU) or ``"tiled"`` (local memory, FPGA).

    ``NESSA_SEL_PAIRWISE=blocked|tiled`` overrides the default, which is ``"tiled"`` on accelerator devices (a
    SmartSSD's FPGA) and ``"blocked"`` elsewhere.
    """
    wanted = os.environ.get(ENV_PAIRWISE, "").strip().lower()
    if wanted:
        if wanted not in ("blocked", "tiled"):
            raise InvalidArgumentError(f"{ENV_PAIRWISE}={wanted!r}: use 'blocked' or 'tiled' (or leave it unset)")
        return wanted
    return "tiled" if _rt().device.type & cl.device_type.ACCELERATOR else "blocked"


def _transposed(rt: OpenCLRuntime, buf: cl.Buffer, n: int, d: int) -> tuple[cl.Buffer, int]:
    """(B transposed and zero-padded to (d, n_pad), n_pad) for the register-blocked kernels."""
    n_pad = round_up(n, 8)
    out = _empty(rt, n_pad * d * 4)
    _kernel("sel_transpose_pad")(rt.queue, (n_pad, d), None, buf, out, np.int32(n), np.int32(d), np.int32(n_pad))
    return out, n_pad


def _panels(
    rt: OpenCLRuntime, buf: cl.Buffer, center: cl.Buffer, n: int, d: int, w: int
) -> tuple[cl.Buffer, cl.Buffer, int]:
    """(rows minus ``center``, cut into zero-padded panels of ``w``, each transposed; squared norms; padded count)."""
    n_pad = round_up(n, w)
    panels, norms = _empty(rt, n_pad * d * 4), _empty(rt, n_pad * 4)
    _kernel("sel_pack_panels")(
        rt.queue, (round_up(n_pad, GL),), (GL,), buf, center, panels, norms, np.int32(n), np.int32(d), np.int32(w),
        np.int32(n_pad),
    )  # fmt: skip
    return panels, norms, n_pad


def distance_center(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """The point both operands of a distance block are shifted by: about the mean of the rows of ``x`` and ``y``.

    Distances do not depend on it; their float32 rounding error does (see ``sel_pack_panels``): it scales with the
    squared norms of the shifted rows, so the center should lie within the rows' spread. Per column, the center is
    ``½(mean(x) + mean(y))`` (``mean(x)`` without ``y``, in float64, as the numpy reference centers) rounded to a
    power-of-two grid of about 1/16 of the column's range (the column's value when it is constant). That costs
    nothing in precision and keeps data on a coarse grid exact: integer features (pixels) keep integer centers, so
    their distances, and so their exact ties, stay exact as without centering.

    Returns:
        float32 (d,).
    """
    lo = x.min(axis=0).astype(np.float64)
    hi = x.max(axis=0).astype(np.float64)
    c = x.mean(axis=0, dtype=np.float64)
    if y is not None:
        lo = np.minimum(lo, y.min(axis=0))
        hi = np.maximum(hi, y.max(axis=0))
        c = 0.5 * (c + y.mean(axis=0, dtype=np.float64))
    spread = hi - lo
    flat = spread <= 0
    grid = np.exp2(np.floor(np.log2(np.where(flat, 1.0, spread) / 16.0)))
    c = np.where(flat, lo, np.round(c / grid) * grid)
    return np.ascontiguousarray(c, dtype=np.float32)


def _pairwise(
    rt: OpenCLRuntime,
    a_buf: cl.Buffer,
    b_buf: cl.Buffer,
    m: int,
    n: int,
    d: int,
    mode: int,
    param: float,
    offset: float,
    sign: float,
    thr: float,
    out: cl.Buffer | None = None,
    center: np.ndarray | None = None,
) -> tuple[cl.Buffer, np.ndarray]:
    """Launch the pairwise-block kernel into ``out`` (m×n); returns it and the per-group max of the values.

    ``center`` (d,): the register-blocked kernel shifts both operands by it before its dot products (give
    :func:`distance_center` for every distance mode; ``None`` means 0, for dot products). The tiled kernel sums
    the squared differences directly and needs none.
    """
    if out is None:
        out = _empty(rt, m * n * 4)
    scalars = (np.int32(mode), np.float32(param), np.float32(offset), np.float32(sign), np.float32(thr))
    if pairwise_kernel_variant() == "tiled":
        gx, gy = round_up(n, TS), round_up(m, TS)
        groups = (gx // TS) * (gy // TS)
        gmax = _empty(rt, groups * 4)
        _kernel("sel_pairwise_tiled")(
            rt.queue, (gx, gy), (TS, TS), a_buf, b_buf, out, np.int32(m), np.int32(n), np.int32(d), *scalars, gmax
        )
    else:
        shift = np.zeros(d, dtype=np.float32) if center is None else np.ascontiguousarray(center, dtype=np.float32)
        c_buf = _to_device(rt, shift)
        ap, an, _ = _panels(rt, a_buf, c_buf, m, d, RB)
        bp, bn, n_pad = _panels(rt, b_buf, c_buf, n, d, PANEL)
        c_buf.release()
        gx, gy = round_up(-(-n_pad // (PANEL * CB)), 8), round_up(-(-m // RB), 8)
        groups = (gx // 8) * (gy // 8)
        gmax = _empty(rt, groups * 4)
        _kernel("sel_pairwise")(
            rt.queue, (gx, gy), (8, 8), ap, bp, an, bn, out, np.int32(m), np.int32(n), np.int32(n_pad), np.int32(d),
            *scalars, gmax,
        )  # fmt: skip
        for buf in (ap, an, bp, bn):
            buf.release()
    maxima = _read(rt.queue, gmax, (groups,), np.float32)
    gmax.release()
    return out, maxima


def _check_threshold(threshold: Any) -> float:
    return _ref._check_real("threshold", threshold)


def _check_size(*dims: int) -> None:
    for v in dims:
        if v >= 2**31:
            raise ResourceExhaustedError(f"dimension {v} exceeds the kernels' 32-bit index range; split the input")


# ------------------------------------------------------------------------------------------------ dense ops
def pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` (m, d) and ``b`` (n, d): float32 (m, n)."""
    x, y = check_pair(a, b)
    rt = _rt()
    (m, d), n = x.shape, y.shape[0]
    _check_size(m * n)
    xa, yb = _to_device(rt, x), _to_device(rt, y)
    out, _ = _pairwise(rt, xa, yb, m, n, d, MODE_SQDIST, 0.0, 0.0, 1.0, float(_NEG_INF), center=distance_center(x, y))
    return _read(rt.queue, out, (m, n), np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities between the rows of ``a`` (m, d) and ``b`` (n, d): float32 (m, n); zero rows give 0."""
    x, y = check_pair(a, b)
    rt = _rt()
    (m, d), n = x.shape, y.shape[0]
    _check_size(m * n)
    xa, yb = _normalized(rt, _to_device(rt, x), m, d), _normalized(rt, _to_device(rt, y), n, d)
    out, _ = _pairwise(rt, xa, yb, m, n, d, MODE_DOT, 0.0, 0.0, 1.0, float(_NEG_INF))
    return np.clip(_read(rt.queue, out, (m, n), np.float32), -1.0, 1.0)


def similarity(
    a: np.ndarray, b: np.ndarray, kind: str = "max_minus_dist", param: float | None = None, threshold: float = 0.0
) -> np.ndarray:
    """Similarity matrix between the rows of ``a`` (m, d) and ``b`` (n, d); see the reference for the kinds.

    Args:
        a: (m, d) features.
        b: (n, d) features.
        kind: ``"max_minus_dist"``, ``"exp"`` or ``"cosine"``.
        param: M for ``max_minus_dist`` (default the block's max distance), D for ``exp`` (default d).
        threshold: similarities below it become 0.

    Returns:
        float32 (m, n).
    """
    x, y = check_pair(a, b)
    check_kind(kind)
    thr = _check_threshold(threshold)
    p = resolve_param(kind, param, x.shape[1])
    rt = _rt()
    (m, d), n = x.shape, y.shape[0]
    _check_size(m * n)
    xa, yb = _to_device(rt, x), _to_device(rt, y)
    if kind == "cosine":
        xa, yb = _normalized(rt, xa, m, d), _normalized(rt, yb, n, d)
    mode, kparam, offset, sign = _transform_of(kind, p)
    center = None if kind == "cosine" else distance_center(x, y)
    if kind == "max_minus_dist" and p is None:
        out, maxima = _pairwise(rt, xa, yb, m, n, d, mode, kparam, 0.0, 1.0, float(_NEG_INF), center=center)
        big = float(maxima.max())
        _kernel("sel_transform_values")(
            rt.queue, (round_up(m * n, GL),), (GL,), out, np.int64(m * n), np.float32(big), np.float32(-1.0),
            np.float32(thr),
        )  # fmt: skip
    else:
        out, _ = _pairwise(rt, xa, yb, m, n, d, mode, kparam, offset, sign, thr, center=center)
    return _read(rt.queue, out, (m, n), np.float32)


def _argmax(
    x: np.ndarray, y: np.ndarray, mode: int, param: float, offset: float, sign: float, thr: float
) -> tuple[np.ndarray, np.ndarray]:
    rt = _rt()
    (n, d), k = x.shape, y.shape[0]
    _check_size(n * d, k * d)
    xa, yb = _to_device(rt, x), _to_device(rt, y)
    yt, k_pad = _transposed(rt, yb, k, d)
    idx, val = _empty(rt, n * 4), _empty(rt, n * 4)
    _kernel("sel_argmax_sim")(
        rt.queue, (round_up(-(-n // RB), 16),), (16,), xa, yt, np.int32(n), np.int32(k), np.int32(k_pad), np.int32(d),
        np.int32(mode), np.float32(param), np.float32(offset), np.float32(sign), np.float32(thr), idx, val,
    )  # fmt: skip
    return _read(rt.queue, idx, (n,), np.int32).astype(np.int64), _read(rt.queue, val, (n,), np.float32)


def nearest_selected(
    x: np.ndarray,
    selected: np.ndarray,
    kind: str = "max_minus_dist",
    param: float | None = None,
    threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x`` the most similar row of ``selected`` (ties: the lowest position), fused (no n×k block).

    Args:
        x: (n, d) features of the ground elements.
        selected: (k, d) features of the selected elements.
        kind: similarity kind.
        param: M (default: the max distance of this n×k block, found by a first fused pass) or D.
        threshold: similarities below it become 0 (before the argmax).

    Returns:
        ``(positions, best)``: int64 (n,) positions into ``selected`` and float32 (n,) the best similarities.
    """
    xs, ys = check_pair(x, selected, ("x", "selected"))
    check_kind(kind)
    thr = _check_threshold(threshold)
    p = resolve_param(kind, param, xs.shape[1])
    if kind == "cosine":
        xs, ys = _ref._unit_rows64(xs).astype(np.float32), _ref._unit_rows64(ys).astype(np.float32)
    mode, kparam, offset, sign = _transform_of(kind, p)
    if kind == "max_minus_dist" and p is None:
        _, far = _argmax(xs, ys, MODE_DIST, 0.0, 0.0, 1.0, float(_NEG_INF))
        offset = float(far.max())
    return _argmax(xs, ys, mode, kparam, offset, sign, thr)


def kmeans_assign(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every row of ``x`` (ties: the lowest centre index), fused (no n×k block).

    Returns:
        ``(labels, sq_dist)``: int64 (n,) centre indices and float32 (n,) squared distances to them.
    """
    xs, cs = check_pair(x, centers, ("x", "centers"))
    labels, best = _argmax(xs, cs, MODE_SQDIST, 0.0, 0.0, -1.0, float(_NEG_INF))
    return labels, -best


def cross_covariance(a: np.ndarray, b: np.ndarray, centered: bool = False) -> np.ndarray:
    """Cross-products aᵀb (p, q) of ``a`` (n, p) and ``b`` (n, q), optionally column-centered (a sum, not a mean).

    Returns:
        float32 (p, q).
    """
    x = check_features("a", a)
    y = check_features("b", b)
    if x.shape[0] != y.shape[0]:
        raise InvalidArgumentError(
            f"a and b must have the same number of rows (samples); got {x.shape[0]} and {y.shape[0]}"
        )
    rt = _rt()
    (n, p), q = x.shape, y.shape[1]
    _check_size(n * p, n * q)
    xa, yb = _to_device(rt, x), _to_device(rt, y)
    ma, mb = _empty(rt, p * 4), _empty(rt, q * 4)
    if centered:
        mean = _kernel("sel_column_mean")
        mean(rt.queue, (p * GL,), (GL,), xa, np.int32(n), np.int32(p), ma)
        mean(rt.queue, (q * GL,), (GL,), yb, np.int32(n), np.int32(q), mb)
    else:
        cl.enqueue_fill_buffer(rt.queue, ma, np.zeros(1, np.float32), 0, p * 4)
        cl.enqueue_fill_buffer(rt.queue, mb, np.zeros(1, np.float32), 0, q * 4)
    out = _empty(rt, p * q * 4)
    _kernel("sel_cross_cov")(
        rt.queue, (round_up(q, TS), round_up(p, TS)), (TS, TS), xa, yb, ma, mb, out, np.int32(n), np.int32(p),
        np.int32(q),
    )  # fmt: skip
    return _read(rt.queue, out, (p, q), np.float32)


def group_topk(scores: np.ndarray, groups: np.ndarray, k: int | Mapping[int, int]) -> np.ndarray:
    """Indices of the ``k`` highest scores of every group (radix select on the device, 32 counting passes).

    Args:
        scores: (n,) scores (NaN is an error; -0.0 equals 0.0).
        groups: (n,) integer group of each element.
        k: how many per group: one int, or a mapping group → int (missing groups take 0; more than a group holds
            takes the whole group).

    Returns:
        int64 indices ordered by group ascending, then score descending, ties by the lowest index.
    """
    s, _, dense, take = normalize_topk_budget(scores, groups, k)
    n, num = s.size, take.size
    sizes = np.bincount(dense, minlength=num)
    rt = _rt()
    queue = rt.queue
    s_buf, g_buf = _to_device(rt, s), _to_device(rt, dense)
    prefix = np.zeros(num, dtype=np.uint32)
    need = take.copy()
    active = (take > 0) & (take < sizes)
    glob = (round_up(n, GL),)
    if active.any():
        p_buf, c_buf = _empty(rt, num * 4), _empty(rt, num * 4)
        counter = _kernel("sel_topk_count")
        counts = np.empty(num, dtype=np.int32)
        for b in range(31, -1, -1):
            bit = np.uint32(1 << b)
            mask = np.uint32((0xFFFFFFFF << (b + 1)) & 0xFFFFFFFF)
            cl.enqueue_copy(queue, p_buf, prefix)
            cl.enqueue_fill_buffer(queue, c_buf, np.zeros(1, np.int32), 0, num * 4)
            counter(queue, glob, (GL,), s_buf, g_buf, p_buf, mask, bit, c_buf, np.int32(n))
            cl.enqueue_copy(queue, counts, c_buf, is_blocking=True)
            hit = active & (counts >= need)
            prefix[hit] |= bit
            miss = active & ~hit
            need[miss] -= counts[miss]
    thresh = np.where(active, prefix, np.where(take > 0, np.uint32(0), np.uint32(0xFFFFFFFF))).astype(np.uint32)
    need = np.where(active, need, 0)
    t_buf, f_buf = _to_device(rt, thresh), _empty(rt, max(n, 4))
    _kernel("sel_topk_mark")(queue, glob, (GL,), s_buf, g_buf, t_buf, f_buf, np.int32(n))
    flags = _read(queue, f_buf, (n,), np.uint8)
    chosen = flags == 1
    ties = np.flatnonzero(flags == 2)
    if ties.size:
        tg = dense[ties]
        order = np.argsort(tg, kind="stable")
        tg_sorted = tg[order]
        first = np.searchsorted(tg_sorted, tg_sorted, side="left")
        rank = np.arange(tg_sorted.size) - first
        chosen[ties[order][rank < need[tg_sorted]]] = True
    picked = np.flatnonzero(chosen)
    order = np.lexsort((picked, -(s[picked] + np.float32(0.0)).astype(np.float64), dense[picked]))
    return picked[order].astype(np.int64)


# ------------------------------------------------------------------------------------------------ FL block
class FacilityLocationBlock:
    """Facility location over a ground set with its (m, n) similarity block kept on the OpenCL device.

    Same API and semantics as :class:`nessa.accel.reference.selection.FacilityLocationBlock`:
    F(S) = Σ_i w_i · max(0, max_{j∈S} s_ij). The block is built by one tiled kernel pass; ``gains`` (one work-group
    per candidate, fixed-order reduction) and ``add`` (coverage and nearest-pick update) work on it in place.
    The block owns its kernel objects, so several blocks may be used in turn from one thread.

    Args:
        ground: (n, d) features of the ground set.
        candidates: (m, d) features of the candidates (default: the ground set itself).
        kind: similarity kind.
        param: M / D; ``max_minus_dist`` without M uses the block's max distance.
        threshold: similarities below it become 0.
        ground_weights: (n,) non-negative weights (default 1).
    """

    backend = "opencl"

    def __init__(
        self,
        ground: np.ndarray,
        candidates: np.ndarray | None = None,
        kind: str = "max_minus_dist",
        param: float | None = None,
        threshold: float = 0.0,
        ground_weights: np.ndarray | None = None,
    ) -> None:
        x = check_features("ground features", ground)
        y = x if candidates is None else check_pair(x, candidates, ("ground features", "candidate features"))[1]
        check_kind(kind)
        self.kind = kind
        self.threshold = _check_threshold(threshold)
        p = resolve_param(kind, param, x.shape[1])
        weights = _ref._check_weights(ground_weights, x.shape[0])
        self.n, d = x.shape
        self.m = y.shape[0]
        _check_size(self.m * self.n)
        rt = self._rt = _rt()
        self._queue = rt.queue
        self._k_gains = rt.checkout_kernel(SOURCE, "sel_fl_gains")  # this block's own: it keeps their arguments set
        self._k_add = rt.checkout_kernel(SOURCE, "sel_fl_add")
        self._kernels_out = True
        self._buffers: list[cl.Buffer] = []
        g_buf = self._own(_to_device(rt, x))
        c_buf = g_buf if candidates is None else self._own(_to_device(rt, y))
        if kind == "cosine":
            g_buf = self._own(_normalized(rt, g_buf, self.n, d))
            c_buf = g_buf if candidates is None else self._own(_normalized(rt, c_buf, self.m, d))
        mode, kparam, offset, sign = _transform_of(kind, p)
        self._s: cl.Buffer | None = _checkout(rt, self.m * self.n * 4)  # parked again by close()
        center = None if kind == "cosine" else distance_center(x, None if candidates is None else y)
        _, maxima = _pairwise(
            rt, c_buf, g_buf, self.m, self.n, d, mode, kparam, 0.0, 1.0, float(_NEG_INF), self._s, center
        )
        if kind == "max_minus_dist" and p is None:
            p = float(maxima.max())
            offset = p
        self.param: float | None = p
        for buf in {id(g_buf): g_buf, id(c_buf): c_buf}.values():  # the features are no longer needed
            buf.release()
            self._buffers.remove(buf)
        self._best = self._own(_empty(rt, self.n * 4))
        self._assign = self._own(_empty(rt, self.n * 4))
        cl.enqueue_fill_buffer(self._queue, self._best, np.full(1, -np.inf, np.float32), 0, self.n * 4)
        cl.enqueue_fill_buffer(self._queue, self._assign, np.full(1, -1, np.int32), 0, self.n * 4)
        self.weights = weights
        self._w = self._own(_to_device(rt, weights) if weights is not None else _empty(rt, 4))
        self._ids = self._own(_empty(rt, self.m * 4))
        self._out = self._own(_empty(rt, self.m * 4))
        self._k_gains.set_args(
            self._s, self._best, self._w, self._ids, np.int32(0), np.int32(self.n), np.float32(offset),
            np.float32(sign), np.float32(self.threshold), np.int32(weights is not None), self._out,
        )  # fmt: skip
        self._k_add.set_args(
            self._s, self._best, self._assign, np.int32(0), np.int32(0), np.int32(self.n), np.float32(offset),
            np.float32(sign), np.float32(self.threshold),
        )  # fmt: skip
        self._add_global = (round_up(-(-self.n // 16), GL),)
        self._tail = (np.int32(self.n), np.float32(offset), np.float32(sign), np.float32(self.threshold),
                      np.int32(weights is not None))  # fmt: skip
        self.selected: list[int] = []
        self._is_selected = np.zeros(self.m, dtype=bool)

    def _own(self, buf: cl.Buffer) -> cl.Buffer:
        self._buffers.append(buf)
        return buf

    @property
    def nbytes(self) -> int:
        """Device bytes held by the block (similarity values, state, scratch)."""
        return int(sum(b.size for b in self._buffers) + (self._s.size if self._s is not None else 0))

    def gains(self, candidate_ids: Any) -> np.ndarray:
        """Marginal gains F(j | S) of the given candidates, float32 (len,)."""
        ids = np.ascontiguousarray(np.asarray(candidate_ids, dtype=np.int64).reshape(-1))
        count = ids.size
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        if ids.min() < 0 or ids.max() >= self.m:
            raise InvalidArgumentError(f"candidate ids must be in [0, {self.m}); got {ids.min()}..{ids.max()}")
        ids32 = ids.astype(np.int32)
        cl.enqueue_copy(self._queue, self._ids, ids32, is_blocking=False)
        self._k_gains.set_arg(4, np.int32(count))
        cl.enqueue_nd_range_kernel(self._queue, self._k_gains, (round_up(count, 8),), (8,))
        out = np.empty(count, dtype=np.float32)
        cl.enqueue_copy(self._queue, out, self._out, is_blocking=True)
        return out

    def add(self, j: int, gain: float | None = None) -> float:
        """Add candidate ``j`` to S (one coverage-update launch); return its gain (given, or computed first)."""
        jj = int(j)
        if not 0 <= jj < self.m:
            raise InvalidArgumentError(f"candidate id must be in [0, {self.m}); got {jj}")
        if self._is_selected[jj]:
            raise FailedPreconditionError(f"candidate {jj} is already selected; pick each candidate once")
        g = float(self.gains([jj])[0]) if gain is None else float(gain)
        self._k_add.set_arg(3, np.int32(jj))
        self._k_add.set_arg(4, np.int32(len(self.selected)))
        cl.enqueue_nd_range_kernel(self._queue, self._k_add, self._add_global, (GL,))
        self.selected.append(jj)
        self._is_selected[jj] = True
        return g

    def _greedy_start(self, k: Any, limit: int) -> int:
        if not _ref.is_int(k) or not 0 <= int(k) <= limit:
            raise InvalidArgumentError(f"k={k!r} must be an int in [0, {limit}] (the candidates not yet selected)")
        return int(k)

    def _greedy_finish(self, picks_buf: cl.Buffer, gains_buf: cl.Buffer, k: int) -> tuple[np.ndarray, np.ndarray]:
        picks = np.empty(k, dtype=np.int32)
        gains = np.empty(k, dtype=np.float32)
        cl.enqueue_copy(self._queue, gains, gains_buf, is_blocking=False)
        cl.enqueue_copy(self._queue, picks, picks_buf, is_blocking=True)
        self.selected.extend(int(j) for j in picks)
        self._is_selected[picks] = True
        return picks.astype(np.int64), gains

    def lazy_greedy(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``k`` lazy-greedy picks among the unselected candidates, all on the device (``sel_fl_lazy``, one launch).

        The same picks, in the same order, as ``k`` naive greedy steps over :meth:`gains` / :meth:`add` (ties: the
        lowest id); the reference is :meth:`nessa.accel.reference.selection.FacilityLocationBlock.lazy_greedy`.

        Returns:
            ``(picks int64 (k,), gains float32 (k,), gain evaluations)``; the picks are added to the block.
        """
        ids = np.flatnonzero(~self._is_selected).astype(np.int32)
        k = self._greedy_start(k, ids.size)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), 0
        rt, count, q = self._rt, ids.size, self._queue
        work = [_empty(rt, count * 4), _empty(rt, count * 4), _empty(rt, self.m * 4), _empty(rt, k * 4),
                _empty(rt, k * 4), _empty(rt, 4)]  # fmt: skip
        hv, hi, fresh, picks_buf, gains_buf, evals_buf = work
        try:
            cl.enqueue_copy(q, self._ids, ids, is_blocking=False)
            self._k_gains.set_arg(4, np.int32(count))
            cl.enqueue_nd_range_kernel(q, self._k_gains, (round_up(count, 8),), (8,))
            n, offset, sign, thr, weighted = self._tail
            _kernel("sel_fl_lazy")(
                q, (1,), (1,), self._s, self._best, self._assign, self._w, self._ids, self._out, np.int32(count),
                np.int32(k), np.int32(len(self.selected)), n, offset, sign, thr, weighted, hv, hi, fresh, picks_buf,
                gains_buf, evals_buf,
            )  # fmt: skip
            evals = np.empty(1, dtype=np.int32)
            cl.enqueue_copy(q, evals, evals_buf, is_blocking=False)
            picks, gains = self._greedy_finish(picks_buf, gains_buf, k)
        finally:
            for buf in work:
                buf.release()
        return picks, gains, count + int(evals[0])

    def stochastic_greedy(self, positions: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Stochastic-greedy picks on the device (``sel_fl_stochastic``, one launch) from host-drawn samples.

        Step t evaluates the unselected candidates whose ranks among the unselected ones (in increasing id order)
        are ``positions[t, :counts[t]]`` (strictly increasing) and picks the best (ties: the lowest id); the
        reference is :meth:`nessa.accel.reference.selection.FacilityLocationBlock.stochastic_greedy`.

        Returns:
            ``(picks int64 (k,), gains float32 (k,), gain evaluations)``; the picks are added to the block.
        """
        pos, cnt = _ref.check_stochastic_samples(positions, counts, self.m - len(self.selected))
        k = cnt.size
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), 0
        rt, q = self._rt, self._queue
        avail = (~self._is_selected).astype(np.int32)
        avail_dev = cl.Buffer(rt.context, _MF.READ_WRITE | _MF.COPY_HOST_PTR, hostbuf=avail)
        work = [avail_dev, _to_device(rt, pos), _to_device(rt, cnt), _empty(rt, k * 4), _empty(rt, k * 4)]
        avail_buf, pos_buf, cnt_buf, picks_buf, gains_buf = work
        try:
            n, offset, sign, thr, weighted = self._tail
            _kernel("sel_fl_stochastic")(
                q, (1,), (1,), self._s, self._best, self._assign, self._w, avail_buf, pos_buf, cnt_buf,
                np.int32(pos.shape[1]), np.int32(self.m), np.int32(k), np.int32(len(self.selected)), n, offset, sign,
                thr, weighted, picks_buf, gains_buf,
            )  # fmt: skip
            picks, gains = self._greedy_finish(picks_buf, gains_buf, k)
        finally:
            for buf in work:
                buf.release()
        return picks, gains, int(cnt.sum())

    @property
    def best(self) -> np.ndarray:
        """Best similarity to S per ground element (−inf before the first add), float32 (n,)."""
        return _read(self._queue, self._best, (self.n,), np.float32)

    @property
    def coverage(self) -> np.ndarray:
        """max(0, best similarity to S) per ground element, float32 (n,)."""
        return np.maximum(self.best, np.float32(0.0))

    @property
    def assignment(self) -> np.ndarray:
        """Position (in add order) of each ground element's most similar selected candidate (−1 before any add)."""
        return _read(self._queue, self._assign, (self.n,), np.int32).astype(np.int64)

    def objective(self) -> float:
        """F(S) = Σ_i w_i max(0, best_i), summed in float64."""
        cov = self.coverage.astype(np.float64)
        return float(cov.sum() if self.weights is None else (cov * self.weights).sum())

    def close(self) -> None:
        """Release the device buffers (the block cannot be used afterwards)."""
        self._queue.finish()
        for buf in self._buffers:
            buf.release()
        self._buffers = []
        if self._s is not None:
            _checkin(self._s)
            self._s = None
        if getattr(self, "_kernels_out", False):
            self._kernels_out = False
            self._rt.checkin_kernel(SOURCE, "sel_fl_gains", self._k_gains)
            self._rt.checkin_kernel(SOURCE, "sel_fl_add", self._k_add)

    def __del__(self) -> None:  # buffers are also freed by pyopencl's GC; this frees them promptly
        try:
            held = getattr(self, "_buffers", None) or getattr(self, "_s", None) is not None
            if held or getattr(self, "_kernels_out", False):
                self.close()
        except Exception:
            pass
