"""Host wrappers of the extended proxy kernels (``fpga_kernels/nn_ext.cl``).

Activations, softmax, norms, batched matmul and attention, embedding, and the N-d copy / broadcast / mean kernels
behind the layout ops.

Each op mirrors its numpy reference in :mod:`nessa.accel.reference.nn`, takes numpy or device arrays and returns a
guarded float32 device array (see :mod:`nessa.accel.nn_ops`), optionally written into ``out=``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from nessa.accel.nn_ops import DeviceOrHost, _dev, _elementwise_size, _launch, _off, _out, _rt, empty
from nessa.accel.runtime import round_up
from nessa.errors import InvalidArgumentError

__all__ = [
    "MAX_RANK",
    "UNARY_MODES",
    "attention",
    "binary",
    "copy_nd",
    "embedding",
    "groupnorm",
    "layernorm",
    "matmul",
    "mean",
    "softmax",
    "unary",
    "upload_constant",
]

_SOURCE = "nn_ext"
#: Most axes (batch included) the N-d kernels take.
MAX_RANK = 8
#: ``nn_unary`` modes by activation name (``scale`` is ``x * alpha + beta``).
UNARY_MODES = {"relu": 0, "gelu": 1, "silu": 2, "sigmoid": 3, "tanh": 4, "scale": 5}


def _meta(*parts: Sequence[int]) -> cl.Buffer:
    arr = np.ascontiguousarray(np.concatenate([np.asarray(p, np.int32) for p in parts]) if parts else [0], np.int32)
    if arr.size == 0:
        arr = np.zeros(1, np.int32)
    return cl.Buffer(_rt().context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=arr)


def _strides(shape: Sequence[int]) -> list[int]:
    out, acc = [0] * len(shape), 1
    for i in range(len(shape) - 1, -1, -1):
        out[i] = acc
        acc *= int(shape[i])
    return out


def _rank_ok(shape: Sequence[int], what: str) -> None:
    if len(shape) > MAX_RANK or len(shape) == 0 or math.prod(shape) == 0:
        raise InvalidArgumentError(f"{what}: shape {tuple(shape)} must be non-empty with at most {MAX_RANK} axes")


def unary(
    x: DeviceOrHost, kind: str, alpha: float = 1.0, beta: float = 0.0, *, out: cl_array.Array | None = None
) -> cl_array.Array:
    """Activation ``kind`` (relu, gelu, silu, sigmoid, tanh) or ``scale`` (``x * alpha + beta``) elementwise."""
    mode = UNARY_MODES.get(kind)
    if mode is None:
        raise InvalidArgumentError(f"unknown activation {kind!r}; use one of {sorted(UNARY_MODES)}")
    _rank_ok(tuple(x.shape), kind)
    xd = _dev(x, f"{kind} input")
    o = _out(out, tuple(x.shape), kind)
    g, lsz = _elementwise_size(xd.size)
    _launch(
        _rt().kernel(_SOURCE, "nn_unary"), g, lsz, xd.base_data, _off(xd), o.base_data, _off(o),
        np.int32(xd.size), np.int32(mode), np.float32(alpha), np.float32(beta),
    )  # fmt: skip
    return o


def _rows(shape: Sequence[int]) -> tuple[int, int]:
    return math.prod(shape[:-1]), int(shape[-1])


def softmax(x: DeviceOrHost, *, out: cl_array.Array | None = None) -> cl_array.Array:
    """Softmax over the last axis."""
    _rank_ok(tuple(x.shape), "softmax")
    xd = _dev(x, "softmax input")
    o = _out(out, tuple(x.shape), "softmax")
    rows, cols = _rows(tuple(x.shape))
    _launch(
        _rt().kernel(_SOURCE, "nn_softmax_rows"), (round_up(rows, 64),), (64,), xd.base_data, _off(xd),
        o.base_data, _off(o), np.int32(rows), np.int32(cols),
    )  # fmt: skip
    return o


def _vec(v: np.ndarray | None, size: int, what: str) -> cl.Buffer:
    arr = np.zeros(1, np.float32) if v is None else np.ascontiguousarray(v, np.float32).reshape(-1)
    if v is not None and arr.size != size:
        raise InvalidArgumentError(f"{what} has {arr.size} values; expected {size}")
    return cl.Buffer(_rt().context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=arr)


def layernorm(
    x: DeviceOrHost,
    weight: np.ndarray | cl.Buffer,
    bias: np.ndarray | cl.Buffer | None,
    eps: float,
    *,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """LayerNorm over the last axis (``weight``/``bias`` numpy vectors or uploaded buffers)."""
    _rank_ok(tuple(x.shape), "layernorm")
    rows, cols = _rows(tuple(x.shape))
    wb = weight if isinstance(weight, cl.Buffer) else _vec(weight, cols, "layernorm weight")
    bb = bias if isinstance(bias, cl.Buffer) else _vec(bias, cols, "layernorm bias")
    xd = _dev(x, "layernorm input")
    o = _out(out, tuple(x.shape), "layernorm")
    _launch(
        _rt().kernel(_SOURCE, "nn_layernorm_rows"), (round_up(rows, 64),), (64,), xd.base_data, _off(xd), wb, bb,
        np.int32(bias is not None), o.base_data, _off(o), np.int32(rows), np.int32(cols), np.float32(eps),
    )  # fmt: skip
    return o


def groupnorm(
    x: DeviceOrHost,
    weight: np.ndarray | cl.Buffer,
    bias: np.ndarray | cl.Buffer | None,
    groups: int,
    eps: float,
    *,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """GroupNorm of ``(N, C, ...)`` in ``groups`` groups with a per-channel affine."""
    shape = tuple(int(v) for v in x.shape)
    _rank_ok(shape, "groupnorm")
    if len(shape) < 2 or groups < 1 or shape[1] % groups:
        raise InvalidArgumentError(f"groupnorm: groups {groups} must divide the channels of {shape}")
    n, c = shape[0], shape[1]
    wb = weight if isinstance(weight, cl.Buffer) else _vec(weight, c, "groupnorm weight")
    bb = bias if isinstance(bias, cl.Buffer) else _vec(bias, c, "groupnorm bias")
    xd = _dev(x, "groupnorm input")
    o = _out(out, shape, "groupnorm")
    _launch(
        _rt().kernel(_SOURCE, "nn_groupnorm"), (round_up(n * groups, 64),), (64,), xd.base_data, _off(xd), wb, bb,
        np.int32(bias is not None), o.base_data, _off(o), np.int32(n), np.int32(c),
        np.int32(math.prod(shape[2:])), np.int32(groups), np.float32(eps),
    )  # fmt: skip
    return o


def _bmm(
    a: cl_array.Array, b: cl_array.Array, o: cl_array.Array, batch: int, m: int, k: int, nc: int, trans_b: bool,
    alpha: float,
) -> None:  # fmt: skip
    _launch(
        _rt().kernel(_SOURCE, "nn_bmm"), (round_up(nc, 8), round_up(batch * m, 8)), (8, 8), a.base_data, _off(a),
        b.base_data, _off(b), o.base_data, _off(o), np.int32(batch), np.int32(m), np.int32(k), np.int32(nc),
        np.int32(1 if trans_b else 0), np.float32(alpha),
    )  # fmt: skip


def matmul(a: DeviceOrHost, b: DeviceOrHost, *, out: cl_array.Array | None = None) -> cl_array.Array:
    """Batched ``a @ b`` over equal leading axes: ``(..., m, k) @ (..., k, n)``."""
    sa, sb = tuple(int(v) for v in a.shape), tuple(int(v) for v in b.shape)
    if len(sa) < 2 or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise InvalidArgumentError(f"matmul cannot multiply shapes {sa} and {sb}")
    _rank_ok(sa, "matmul")
    ad, bd = _dev(a, "matmul operand"), _dev(b, "matmul operand")
    shape = (*sa[:-1], sb[-1])
    o = _out(out, shape, "matmul")
    _bmm(ad, bd, o, math.prod(sa[:-2]), sa[-2], sa[-1], sb[-1], False, 1.0)
    return o


def attention(
    q: DeviceOrHost,
    k: DeviceOrHost,
    v: DeviceOrHost,
    alpha: float = 0.0,
    *,
    out: cl_array.Array | None = None,
    scores: cl_array.Array | None = None,
) -> cl_array.Array:
    """``softmax(q k^T * alpha) v`` (``alpha`` 0: ``1/sqrt(d)``): two batched matmuls around a row softmax.

    ``scores`` is an optional guarded ``(..., T, S)`` scratch array.
    """
    sq, sk, sv = (tuple(int(d) for d in t.shape) for t in (q, k, v))
    if len(sq) < 2 or not (sq[:-2] == sk[:-2] == sv[:-2]) or sq[-1] != sk[-1] or sk[-2] != sv[-2]:
        raise InvalidArgumentError(
            f"attention: q {sq}, k {sk}, v {sv} do not fit (..., T, d), (..., S, d), (..., S, e)"
        )
    _rank_ok(sq, "attention")
    batch, t, d, s, e = math.prod(sq[:-2]), sq[-2], sq[-1], sk[-2], sv[-1]
    scale = float(alpha) if alpha else 1.0 / math.sqrt(d)
    qd, kd, vd = _dev(q, "attention q"), _dev(k, "attention k"), _dev(v, "attention v")
    sc = _out(scores, (*sq[:-1], s), "attention scores")
    _bmm(qd, kd, sc, batch, t, d, s, True, scale)
    softmax(sc, out=sc)
    o = _out(out, (*sq[:-1], e), "attention")
    _bmm(sc, vd, o, batch, t, s, e, False, 1.0)
    return o


def embedding(
    indices: DeviceOrHost, weight: np.ndarray | cl.Buffer, vocab: int, dim: int, *, out: cl_array.Array | None = None
) -> cl_array.Array:
    """Rows of ``weight`` ``(vocab, dim)`` at the rounded float ``indices``; NaN rows outside ``[0, vocab)``."""
    shape = tuple(int(v) for v in indices.shape)
    _rank_ok(shape, "embedding")
    wb = weight if isinstance(weight, cl.Buffer) else _vec(weight, vocab * dim, "embedding weight")
    xd = _dev(indices, "embedding indices")
    o = _out(out, (*shape, dim), "embedding")
    rows = math.prod(shape)
    _launch(
        _rt().kernel(_SOURCE, "nn_embedding"), (round_up(dim, 8), round_up(rows, 8)), (8, 8), xd.base_data,
        _off(xd), wb, o.base_data, _off(o), np.int32(rows), np.int32(dim), np.int32(vocab),
    )  # fmt: skip
    return o


def copy_nd(
    src: cl_array.Array,
    dst: cl_array.Array,
    shape: Sequence[int],
    src_strides: Sequence[int],
    dst_strides: Sequence[int],
    src_start: int = 0,
    dst_start: int = 0,
) -> None:
    """``dst[dst_start + D(i)] = src[src_start + S(i)]`` over the elements of ``shape`` (strides in elements)."""
    _rank_ok(shape, "copy")
    total = math.prod(shape)
    g, lsz = _elementwise_size(total)
    _launch(
        _rt().kernel(_SOURCE, "nn_copy_nd"), g, lsz, src.base_data, np.int32(src.offset // 4 + src_start),
        dst.base_data, np.int32(dst.offset // 4 + dst_start), np.int32(total), np.int32(len(shape)),
        _meta(shape, src_strides, dst_strides),
    )  # fmt: skip


def permute(x: DeviceOrHost, axes: Sequence[int], *, out: cl_array.Array | None = None) -> cl_array.Array:
    """``x.transpose(axes)`` made contiguous."""
    shape = tuple(int(v) for v in x.shape)
    if sorted(int(a) for a in axes) != list(range(len(shape))):
        raise InvalidArgumentError(f"permute: {list(axes)} is not a permutation of the axes of {shape}")
    xd = _dev(x, "permute input")
    strides = _strides(shape)
    out_shape = tuple(shape[a] for a in axes)
    o = _out(out, out_shape, "permute")
    copy_nd(xd, o, out_shape, [strides[a] for a in axes], _strides(out_shape))
    return o


def concat(xs: Sequence[DeviceOrHost], axis: int, n: int, *, out: cl_array.Array | None = None) -> cl_array.Array:
    """Join along ``axis``; an operand with batch size 1 (a constant) is repeated over the ``n`` samples."""
    shapes = [tuple(int(v) for v in x.shape) for x in xs]
    full = [(n, *s[1:]) for s in shapes]
    out_shape = (*full[0][:axis], sum(s[axis] for s in full), *full[0][axis + 1 :])
    for s in full:
        if len(s) != len(out_shape) or any(
            a != b for i, (a, b) in enumerate(zip(s, out_shape, strict=True)) if i != axis
        ):
            raise InvalidArgumentError(f"concat: cannot join shapes {shapes} along axis {axis}")
    o = _out(out, out_shape, "concat")
    dst_strides = _strides(out_shape)
    start = 0
    for x, s, f in zip(xs, shapes, full, strict=True):
        xd = _dev(x, "concat operand")
        src_strides = _strides(s)
        if s[0] != n:
            src_strides[0] = 0
        copy_nd(xd, o, f, src_strides, dst_strides, dst_start=start * dst_strides[axis])
        start += f[axis]
    return o


def slice_axis(
    x: DeviceOrHost, axis: int, start: int, stop: int, *, out: cl_array.Array | None = None
) -> cl_array.Array:
    """Elements ``start <= i < stop`` along ``axis``, contiguous."""
    shape = tuple(int(v) for v in x.shape)
    if not 0 <= start < stop <= shape[axis]:
        raise InvalidArgumentError(f"slice [{start}, {stop}) is outside axis {axis} of {shape}")
    xd = _dev(x, "slice input")
    out_shape = (*shape[:axis], stop - start, *shape[axis + 1 :])
    o = _out(out, out_shape, "slice")
    strides = _strides(shape)
    copy_nd(xd, o, out_shape, strides, _strides(out_shape), src_start=start * strides[axis])
    return o


def binary(a: DeviceOrHost, b: DeviceOrHost, kind: str, *, out: cl_array.Array | None = None) -> cl_array.Array:
    """``a + b`` (``kind="add"``) or ``a * b`` (``"mul"``) with numpy broadcasting (equal ranks)."""
    sa, sb = tuple(int(v) for v in a.shape), tuple(int(v) for v in b.shape)
    if len(sa) != len(sb):
        raise InvalidArgumentError(f"{kind}: operands need equal ranks; got {sa} and {sb}")
    try:
        shape = tuple(int(v) for v in np.broadcast_shapes(sa, sb))
    except ValueError:
        raise InvalidArgumentError(f"{kind}: shapes {sa} and {sb} do not broadcast") from None
    _rank_ok(shape, kind)
    ad, bd = _dev(a, f"{kind} operand"), _dev(b, f"{kind} operand")
    o = _out(out, shape, kind)

    def bstrides(s: tuple[int, ...]) -> list[int]:
        return [0 if d == 1 and t != 1 else st for d, t, st in zip(s, shape, _strides(s), strict=True)]

    total = math.prod(shape)
    g, lsz = _elementwise_size(total)
    _launch(
        _rt().kernel(_SOURCE, "nn_binary_nd"), g, lsz, ad.base_data, _off(ad), bd.base_data, _off(bd),
        o.base_data, _off(o), np.int32(total), np.int32(len(shape)), _meta(shape, bstrides(sa), bstrides(sb)),
        np.int32(0 if kind == "add" else 1),
    )  # fmt: skip
    return o


def mean(x: DeviceOrHost, axes: Sequence[int], *, out: cl_array.Array | None = None) -> cl_array.Array:
    """Mean over ``axes`` (removed from the shape)."""
    shape = tuple(int(v) for v in x.shape)
    _rank_ok(shape, "mean")
    red = sorted({int(a) % len(shape) for a in axes})
    kept = [i for i in range(len(shape)) if i not in red]
    if not red or not kept:
        raise InvalidArgumentError(f"mean: axes {list(axes)} must reduce some but not all axes of {shape}")
    strides = _strides(shape)
    xd = _dev(x, "mean input")
    out_shape = tuple(shape[i] for i in kept)
    o = _out(out, out_shape, "mean")
    total = math.prod(out_shape)
    count = math.prod(shape[i] for i in red)
    g, lsz = _elementwise_size(total)
    meta = _meta(out_shape, [strides[i] for i in kept], [shape[i] for i in red], [strides[i] for i in red])
    _launch(
        _rt().kernel(_SOURCE, "nn_mean_nd"), g, lsz, xd.base_data, _off(xd), o.base_data, _off(o), np.int32(total),
        np.int32(len(kept)), np.int32(len(red)), np.int32(count), meta,
    )  # fmt: skip
    return o


def upload_constant(value: np.ndarray) -> cl_array.Array:
    """A per-sample constant as a guarded ``(1, *shape)`` device array."""
    arr = np.ascontiguousarray(value, np.float32)[None]
    o = empty(arr.shape)
    cl.enqueue_copy(_rt().queue, cast(cl.Buffer, o.base_data), arr, dst_offset=o.offset)
    return o
