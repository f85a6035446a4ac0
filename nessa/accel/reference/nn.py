"""Numpy reference of the proxy (neural-network) ops: the oracle for the OpenCL kernels and the numpy backend.

Every function has the signature of its OpenCL host op in :mod:`nessa.accel.nn_ops` and takes and returns numpy
arrays. Activations are ``(N, C, H, W)`` (2-D ops), ``(N, C, L)`` (1-D ops) or ``(N, F)`` (linear); weights are
float32 (int8 proxy weights are dequantized before they get here). Convolutions and linear layers accumulate in
float64 and round the result to float32 once, so the reference is closer to exact than any float32 kernel.

The ``*_shape`` helpers hold the shape rules (and the errors for inputs that break them) that the OpenCL host ops
check before launching a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nessa.errors import InvalidArgumentError

__all__ = [
    "add",
    "attention",
    "avgpool1d",
    "avgpool2d",
    "binary",
    "conv1d",
    "conv2d",
    "embedding",
    "flatten",
    "global_avgpool",
    "groupnorm",
    "layernorm",
    "linear",
    "matmul",
    "maxpool1d",
    "maxpool2d",
    "mean_axes",
    "normalize",
    "relu",
    "scale",
    "softmax",
    "softmax_xent",
    "unary",
]

IntPair = int | Sequence[int]

# Bound on the float64 im2col block the conv reference builds at once (bytes).
_IM2COL_BYTES = 64 << 20


def _pair(value: IntPair | None, dims: int, name: str, minimum: int) -> tuple[int, ...]:
    if value is None:
        raise InvalidArgumentError(f"{name} is required")
    values = (int(value),) * dims if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    if len(values) == 1 and dims > 1:
        values = values * dims
    if len(values) != dims:
        raise InvalidArgumentError(f"{name} needs {dims} values; got {value!r}")
    if any(v < minimum for v in values):
        raise InvalidArgumentError(f"{name} values must be >= {minimum}; got {value!r}")
    return values


def _nonempty(name: str, shape: Sequence[int], rank: int, what: str) -> None:
    if len(shape) != rank:
        raise InvalidArgumentError(f"{name} must be {what} ({rank}-D); got shape {tuple(shape)}")
    if any(int(v) == 0 for v in shape):
        raise InvalidArgumentError(f"{name} is empty (shape {tuple(shape)}); pass at least one element per axis")


def conv_shape(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    b_shape: Sequence[int] | None,
    stride: IntPair,
    padding: IntPair,
    dims: int,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Check a conv's shapes; return ``(output shape, stride, padding)``.

    Raises:
        InvalidArgumentError: empty input, wrong ranks, channel mismatch, kernel larger than the padded input.
    """
    what = "(N, C, L)" if dims == 1 else "(N, C, H, W)"
    _nonempty("conv input", x_shape, dims + 2, what)
    _nonempty("conv weight", w_shape, dims + 2, "(Co, C, k)" if dims == 1 else "(Co, C, kh, kw)")
    if int(w_shape[1]) != int(x_shape[1]):
        raise InvalidArgumentError(
            f"conv weight {tuple(w_shape)} expects {w_shape[1]} input channels but the input {tuple(x_shape)} has "
            f"{x_shape[1]}"
        )
    if b_shape is not None and tuple(int(v) for v in b_shape) != (int(w_shape[0]),):
        raise InvalidArgumentError(f"conv bias shape {tuple(b_shape)} must be ({w_shape[0]},) for weight {w_shape}")
    s = _pair(stride, dims, "stride", 1)
    p = _pair(padding, dims, "padding", 0)
    out = tuple((int(x_shape[2 + i]) + 2 * p[i] - int(w_shape[2 + i])) // s[i] + 1 for i in range(dims))
    if any(o < 1 for o in out):
        raise InvalidArgumentError(
            f"conv kernel {tuple(w_shape[2:])} is larger than the padded input {tuple(x_shape[2:])} (padding {p})"
        )
    return (int(x_shape[0]), int(w_shape[0]), *out), s, p


def linear_shape(x_shape: Sequence[int], w_shape: Sequence[int], b_shape: Sequence[int] | None) -> tuple[int, int]:
    """Check a linear layer's shapes; return the output shape ``(N, M)``."""
    _nonempty("linear input", x_shape, 2, "(N, F)")
    _nonempty("linear weight", w_shape, 2, "(M, F)")
    if int(w_shape[1]) != int(x_shape[1]):
        raise InvalidArgumentError(
            f"linear weight {tuple(w_shape)} expects {w_shape[1]} features but the input has {x_shape[1]}"
        )
    if b_shape is not None and tuple(int(v) for v in b_shape) != (int(w_shape[0]),):
        raise InvalidArgumentError(f"linear bias shape {tuple(b_shape)} must be ({w_shape[0]},)")
    return int(x_shape[0]), int(w_shape[0])


def pool_shape(
    x_shape: Sequence[int], kernel_size: IntPair, stride: IntPair | None, padding: IntPair, dims: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Check a pool's shapes; return ``(output shape, kernel, stride, padding)`` (stride defaults to the kernel)."""
    _nonempty("pool input", x_shape, dims + 2, "(N, C, L)" if dims == 1 else "(N, C, H, W)")
    k = _pair(kernel_size, dims, "kernel_size", 1)
    s = k if stride is None else _pair(stride, dims, "stride", 1)
    p = _pair(padding, dims, "padding", 0)
    if any(2 * pi > ki for pi, ki in zip(p, k, strict=True)):
        raise InvalidArgumentError(f"pool padding {p} must be at most half the kernel {k}")
    out = tuple((int(x_shape[2 + i]) + 2 * p[i] - k[i]) // s[i] + 1 for i in range(dims))
    if any(o < 1 for o in out):
        raise InvalidArgumentError(f"pool kernel {k} is larger than the padded input {tuple(x_shape[2:])}")
    return (int(x_shape[0]), int(x_shape[1]), *out), k, s, p


def same_shape(a_shape: Sequence[int], b_shape: Sequence[int], what: str) -> None:
    """Check that two operands of an elementwise op have equal, non-empty shapes."""
    if tuple(a_shape) != tuple(b_shape):
        raise InvalidArgumentError(f"{what} needs equal shapes; got {tuple(a_shape)} and {tuple(b_shape)}")
    if len(a_shape) == 0 or any(int(v) == 0 for v in a_shape):
        raise InvalidArgumentError(f"{what} got an empty array of shape {tuple(a_shape)}")


def xent_shape(logits_shape: Sequence[int], labels: np.ndarray) -> None:
    """Check logits ``(N, C)`` and labels ``(N,)`` in ``[0, C)``."""
    _nonempty("logits", logits_shape, 2, "(N, C)")
    if labels.shape != (int(logits_shape[0]),):
        raise InvalidArgumentError(f"labels must have shape ({logits_shape[0]},); got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgumentError(f"labels must be integers; got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= int(logits_shape[1])):
        raise InvalidArgumentError(
            f"labels must be in [0, {logits_shape[1]}); got values from {labels.min()} to {labels.max()}"
        )


def norm_shape(x_shape: Sequence[int], mean: np.ndarray, std: np.ndarray) -> None:
    """Check a batch ``(N, C, ...)`` and per-channel (or single) mean/std."""
    if len(x_shape) < 2 or any(int(v) == 0 for v in x_shape):
        raise InvalidArgumentError(f"normalize needs a non-empty batch (N, C, ...); got shape {tuple(x_shape)}")
    if mean.shape != std.shape or mean.ndim != 1 or mean.size not in (1, int(x_shape[1])):
        raise InvalidArgumentError(
            f"normalize needs mean and std of one value or one per channel ({x_shape[1]}); got shapes "
            f"{mean.shape} and {std.shape}"
        )
    if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)) or np.any(std == 0):
        raise InvalidArgumentError("normalize needs finite mean and finite, non-zero std")


def _f32(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidArgumentError(f"{name} must be a float array; got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: IntPair,
    padding: IntPair,
    relu: bool,
    residual: np.ndarray | None,
    dims: int,
) -> np.ndarray:
    x = _f32(x, "conv input")
    w = _f32(weight, "conv weight")
    b = None if bias is None else _f32(bias, "conv bias")
    out_shape, s, p = conv_shape(x.shape, w.shape, None if b is None else b.shape, stride, padding, dims)
    if residual is not None:
        same_shape(np.shape(residual), out_shape, "conv residual")
    if dims == 1:
        x, w, s, p = x[:, :, None, :], w[:, :, None, :], (1, *s), (0, *p)
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    ho, wo = (h + 2 * p[0] - kh) // s[0] + 1, (wd + 2 * p[1] - kw) // s[1] + 1
    w2 = w.astype(np.float64).reshape(co, -1)
    out = np.empty((n, co, ho, wo), dtype=np.float32)
    chunk = max(1, _IM2COL_BYTES // max(1, 8 * c * kh * kw * ho * wo))
    for lo in range(0, n, chunk):
        xp = np.pad(x[lo : lo + chunk].astype(np.float64), ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, :: s[0], :: s[1]][
            :, :, :ho, :wo
        ]
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(win.shape[0], ho * wo, c * kh * kw)
        acc = (cols @ w2.T).transpose(0, 2, 1).reshape(-1, co, ho, wo)
        if b is not None:
            acc += b.astype(np.float64)[None, :, None, None]
        out[lo : lo + chunk] = acc
    if dims == 1:
        out = out[:, :, 0, :]
    if residual is not None:
        out = out + _f32(residual, "conv residual")
    return np.maximum(out, 0) if relu else out


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    relu: bool = False,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """2-D convolution (cross-correlation, zero padding), optionally ``+ residual`` and then ReLU.

    Args:
        x: ``(N, C, H, W)`` float.
        weight: ``(Co, C, kh, kw)`` float.
        bias: ``(Co,)`` or None.
        stride: one value or ``(sh, sw)``.
        padding: one value or ``(ph, pw)``.
        relu: apply ReLU last.
        residual: ``(N, Co, Ho, Wo)`` added before the ReLU.

    Returns:
        ``(N, Co, Ho, Wo)`` float32.
    """
    return _conv(x, weight, bias, stride, padding, relu, residual, 2)


def conv1d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    relu: bool = False,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """1-D convolution of ``(N, C, L)`` with ``(Co, C, k)``; see :func:`conv2d`. Returns ``(N, Co, Lo)``."""
    return _conv(x, weight, bias, stride, padding, relu, residual, 1)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, relu: bool = False) -> np.ndarray:
    """``x @ weight.T + bias`` for ``x`` ``(N, F)`` and ``weight`` ``(M, F)``, optionally ReLU; ``(N, M)`` float32."""
    x = _f32(x, "linear input")
    w = _f32(weight, "linear weight")
    b = None if bias is None else _f32(bias, "linear bias")
    linear_shape(x.shape, w.shape, None if b is None else b.shape)
    out = x.astype(np.float64) @ w.astype(np.float64).T
    if b is not None:
        out += b.astype(np.float64)
    out32 = out.astype(np.float32)
    return np.maximum(out32, 0) if relu else out32


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)`` elementwise (float32)."""
    x = _f32(x, "relu input")
    if x.size == 0:
        raise InvalidArgumentError("relu got an empty array")
    return np.maximum(x, 0)


def add(a: np.ndarray, b: np.ndarray, *, relu: bool = False) -> np.ndarray:
    """``a + b`` elementwise (equal shapes), optionally ReLU (float32)."""
    a = _f32(a, "add operand")
    b = _f32(b, "add operand")
    same_shape(a.shape, b.shape, "add")
    out = a + b
    return np.maximum(out, 0) if relu else out


def _pool(
    x: np.ndarray, kernel_size: IntPair, stride: IntPair | None, padding: IntPair, dims: int, kind: str
) -> np.ndarray:
    x = _f32(x, "pool input")
    _, k, s, p = pool_shape(x.shape, kernel_size, stride, padding, dims)
    if dims == 1:
        x, k, s, p = x[:, :, None, :], (1, *k), (1, *s), (0, *p)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, k, axis=(2, 3))[:, :, :: s[0], :: s[1]]
    ho = (x.shape[2] + 2 * p[0] - k[0]) // s[0] + 1
    wo = (x.shape[3] + 2 * p[1] - k[1]) // s[1] + 1
    win = win[:, :, :ho, :wo]
    if kind == "max":
        out = win.max(axis=(4, 5))
    else:
        out = (win.astype(np.float64).sum(axis=(4, 5)) / (k[0] * k[1])).astype(np.float32)
    return out[:, :, 0, :] if dims == 1 else out


def maxpool2d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> np.ndarray:
    """Max pooling of ``(N, C, H, W)`` (padding counts as -inf); stride defaults to the kernel size."""
    return _pool(x, kernel_size, stride, padding, 2, "max")


def maxpool1d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> np.ndarray:
    """Max pooling of ``(N, C, L)``; see :func:`maxpool2d`."""
    return _pool(x, kernel_size, stride, padding, 1, "max")


def avgpool2d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> np.ndarray:
    """Average pooling of ``(N, C, H, W)``; zero padding counts in the divisor (torch's ``count_include_pad``)."""
    return _pool(x, kernel_size, stride, padding, 2, "avg")


def avgpool1d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> np.ndarray:
    """Average pooling of ``(N, C, L)``; see :func:`avgpool2d`."""
    return _pool(x, kernel_size, stride, padding, 1, "avg")


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """Mean over every spatial axis: ``(N, C, ...)`` to ``(N, C)`` float32."""
    x = _f32(x, "global_avgpool input")
    if x.ndim < 3 or x.size == 0:
        raise InvalidArgumentError(f"global_avgpool needs a non-empty (N, C, ...) input; got shape {x.shape}")
    return x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64).mean(axis=2).astype(np.float32)


def flatten(x: np.ndarray) -> np.ndarray:
    """``(N, ...)`` to ``(N, prod(...))`` (a view)."""
    x = np.asarray(x)
    if x.ndim < 1 or x.size == 0:
        raise InvalidArgumentError(f"flatten got an empty array of shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``(x * scale - mean[c]) / std[c]`` in float32 for a uint8 or float batch ``(N, C, ...)``.

    ``mean``/``std`` hold one value or one per channel (axis 1); empty arrays mean no normalization.
    """
    x = np.asarray(x)
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise InvalidArgumentError(f"normalize takes uint8 or float samples; got dtype {x.dtype}")
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    sd = np.asarray(std, dtype=np.float32).reshape(-1)
    if m.size == 0 and sd.size == 0:
        m, sd = np.zeros(1, np.float32), np.ones(1, np.float32)
    norm_shape(x.shape, m, sd)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    return (x.astype(np.float32) * np.float32(scale) - m.reshape(bshape)) / sd.reshape(bshape)


def softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax, last-layer gradient and cross-entropy per sample.

    Args:
        logits: ``(N, C)`` float.
        labels: ``(N,)`` integers in ``[0, C)``.

    Returns:
        ``(grad, loss)``: ``softmax(z) - onehot(y)`` ``(N, C)`` and ``logsumexp(z) - z[y]`` ``(N,)``, float32.
    """
    z = _f32(logits, "logits").astype(np.float64)
    y = np.asarray(labels)
    xent_shape(z.shape, y)
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    total = e.sum(axis=1, keepdims=True)
    grad = e / total
    rows = np.arange(z.shape[0])
    grad[rows, y] -= 1.0
    loss = np.log(total[:, 0]) + zmax[:, 0] - z[rows, y]
    return grad.astype(np.float32), loss.astype(np.float32)


# --- the extended vocabulary (activations, norms, attention, layout) ------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    """Erf in float64 (vectorized ``math.erf``; numpy has none)."""
    return np.vectorize(math.erf, otypes=[np.float64])(x) if x.size else x.astype(np.float64)


def unary(x: np.ndarray, kind: str) -> np.ndarray:
    """Elementwise activation ``kind``: ``relu``, ``gelu`` (exact, erf), ``silu``, ``sigmoid`` or ``tanh`` (float32)."""
    v = _f32(x, f"{kind} input").astype(np.float64)
    if v.size == 0:
        raise InvalidArgumentError(f"{kind} got an empty array")
    if kind == "relu":
        out = np.maximum(v, 0)
    elif kind == "gelu":
        out = 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))
    elif kind == "silu":
        out = v / (1.0 + np.exp(-v))
    elif kind == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-v))
    elif kind == "tanh":
        out = np.tanh(v)
    else:
        raise InvalidArgumentError(f"unknown activation {kind!r}; use relu, gelu, silu, sigmoid or tanh")
    return out.astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float32)."""
    v = _f32(x, "softmax input").astype(np.float64)
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def scale(x: np.ndarray, alpha: float, beta: float = 0.0) -> np.ndarray:
    """``x * alpha + beta`` (float32 arithmetic, as the kernel)."""
    return _f32(x, "scale input") * np.float32(alpha) + np.float32(beta)


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, eps: float) -> np.ndarray:
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias`` (biased variance)."""
    v = _f32(x, "layernorm input").astype(np.float64)
    w = _f32(weight, "layernorm weight").astype(np.float64)
    if w.shape != (v.shape[-1],):
        raise InvalidArgumentError(f"layernorm weight {w.shape} must be ({v.shape[-1]},)")
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    out = (v - mean) / np.sqrt(var + eps) * w
    if bias is not None:
        out = out + _f32(bias, "layernorm bias").astype(np.float64)
    return out.astype(np.float32)


def groupnorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, groups: int, eps: float) -> np.ndarray:
    """GroupNorm of ``(N, C, ...)`` in ``groups`` groups, then the per-channel affine ``weight``/``bias``."""
    v = _f32(x, "groupnorm input").astype(np.float64)
    n, c = v.shape[0], v.shape[1]
    if groups < 1 or c % groups:
        raise InvalidArgumentError(f"groupnorm groups {groups} must divide the {c} channels")
    g = v.reshape(n, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    out = ((g - mean) / np.sqrt(var + eps)).reshape(v.shape)
    bshape = (1, c) + (1,) * (v.ndim - 2)
    out = out * _f32(weight, "groupnorm weight").astype(np.float64).reshape(bshape)
    if bias is not None:
        out = out + _f32(bias, "groupnorm bias").astype(np.float64).reshape(bshape)
    return out.astype(np.float32)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched ``a @ b`` over equal leading axes (float64 accumulation, float32 result)."""
    a64, b64 = _f32(a, "matmul operand").astype(np.float64), _f32(b, "matmul operand").astype(np.float64)
    if a64.ndim < 2 or a64.shape[:-2] != b64.shape[:-2] or a64.shape[-1] != b64.shape[-2]:
        raise InvalidArgumentError(f"matmul cannot multiply shapes {a64.shape} and {b64.shape}")
    return (a64 @ b64).astype(np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, alpha: float = 0.0) -> np.ndarray:
    """``softmax(q k^T * alpha) v`` over equal leading axes; ``alpha`` 0 means ``1 / sqrt(d)``."""
    q64 = _f32(q, "attention q").astype(np.float64)
    k64 = _f32(k, "attention k").astype(np.float64)
    v64 = _f32(v, "attention v").astype(np.float64)
    s = alpha if alpha else 1.0 / math.sqrt(q64.shape[-1])
    scores = (q64 @ np.swapaxes(k64, -1, -2)) * s
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return (p @ v64).astype(np.float32)


def binary(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """``a + b`` (``kind="add"``) or ``a * b`` (``"mul"``) with numpy broadcasting (float32)."""
    av, bv = _f32(a, f"{kind} operand"), _f32(b, f"{kind} operand")
    return av + bv if kind == "add" else av * bv


def embedding(indices: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Rows of ``weight`` ``(V, D)`` at ``indices`` (floats holding integers, rounded); outside ``[0, V)``: NaN."""
    idx = np.rint(_f32(indices, "embedding indices").astype(np.float64))
    w = _f32(weight, "embedding weight")
    ok = (idx >= 0) & (idx < w.shape[0])
    rows = w[np.where(ok, idx, 0).astype(np.int64)]
    rows[~ok] = np.nan
    return rows


def mean_axes(x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Mean over ``axes`` of the full array (batch axis 0), removed from the shape (float64 sum)."""
    return _f32(x, "mean input").astype(np.float64).mean(axis=tuple(int(a) for a in axes)).astype(np.float32)
