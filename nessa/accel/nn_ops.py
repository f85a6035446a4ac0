"""Typed host wrappers of the proxy's OpenCL kernels (``fpga_kernels/nn.cl``).

Each op has the signature of its numpy reference in :mod:`nessa.accel.reference.nn` (plus an optional ``out=``
to reuse a device buffer), accepts numpy or :class:`pyopencl.array.Array` inputs and returns device arrays, so a
chain of ops keeps its activations on the device; call ``.get()`` for numpy. Shapes, dtypes and emptiness are
checked before anything is launched (:class:`~nessa.errors.InvalidArgumentError`).

Device activations are float32, C-contiguous, with :data:`GUARD` floats of slack before and after the data
(:func:`empty`, :func:`to_device`): the vectorized convolution reads whole vectors at row edges and masks the
lanes outside the image, so those reads must stay inside the buffer. An array without the slack is copied into
one that has it.

Weights are float32 on the device: int8 proxy weights are dequantized on the host when a proxy is loaded
(:mod:`nessa.proxy.quantize`) and packed once (:class:`ConvWeights`, :class:`LinearWeights`); a numpy weight
passed to an op is packed and uploaded on every call.

Performance notes (PoCL on a CPU): the conv kernel is a register-blocked direct convolution, each work-item
computing ``tp`` consecutive output pixels (one vector) × ``tco`` output channels; the kernel size, stride and
tile are compile-time constants (one program per shape class, built once per process). Local memory is not used:
on a CPU the working set of a work-group already sits in L1/L2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from nessa.accel.reference.nn import (
    IntPair,
    conv_shape,
    linear_shape,
    norm_shape,
    pool_shape,
    same_shape,
    xent_shape,
)
from nessa.accel.runtime import OpenCLRuntime, get_runtime, round_up
from nessa.errors import InvalidArgumentError

__all__ = [
    "GUARD",
    "ConvWeights",
    "LinearWeights",
    "add",
    "avgpool1d",
    "avgpool2d",
    "conv1d",
    "conv2d",
    "empty",
    "flatten",
    "global_avgpool",
    "linear",
    "maxpool1d",
    "maxpool2d",
    "normalize",
    "relu",
    "softmax_xent",
    "to_device",
]

#: Floats of slack before and after every device activation.
GUARD = 128
_SOURCE = "nn"
_ELEMENTWISE_WG = 256
_CONV_WG = 16
_INT_MAX = 2**31 - 1

DeviceOrHost = np.ndarray | cl_array.Array


def _rt() -> OpenCLRuntime:
    return get_runtime()


def empty(shape: Sequence[int], runtime: OpenCLRuntime | None = None) -> cl_array.Array:
    """A float32 device array of ``shape`` with :data:`GUARD` floats of slack on both sides (uninitialized)."""
    rt = runtime or _rt()
    shape = tuple(int(v) for v in shape)
    n = math.prod(shape)
    if n > _INT_MAX - 2 * GUARD:
        raise InvalidArgumentError(f"device array of shape {shape} is too large for 32-bit kernel indexing")
    buf = cl.Buffer(rt.context, cl.mem_flags.READ_WRITE, size=4 * (n + 2 * GUARD))
    return cl_array.Array(rt.queue, shape, np.float32, data=buf, offset=4 * GUARD)


def _buf(a: cl_array.Array) -> cl.Buffer:
    """The buffer behind a device array (its data starts ``a.offset`` bytes in)."""
    return cast(cl.Buffer, a.base_data)


def _guarded(a: cl_array.Array) -> bool:
    return (
        a.dtype == np.float32
        and a.flags.c_contiguous
        and a.offset >= 4 * GUARD
        and a.offset % 4 == 0
        and _buf(a).size >= a.offset + a.nbytes + 4 * GUARD
    )


def to_device(x: DeviceOrHost, runtime: OpenCLRuntime | None = None) -> cl_array.Array:
    """A guarded float32 device copy of ``x`` (returned as is if it already is one)."""
    if isinstance(x, cl_array.Array):
        if _guarded(x):
            return x
        if x.dtype != np.float32:
            raise InvalidArgumentError(f"device arrays must be float32; got {x.dtype}")
        out = empty(x.shape, runtime)
        cl.enqueue_copy((runtime or _rt()).queue, _buf(out), x.copy().data, dst_offset=out.offset)
        return out
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidArgumentError(f"expected a float array; got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    out = empty(arr.shape, runtime)
    if arr.size:
        cl.enqueue_copy((runtime or _rt()).queue, _buf(out), arr, dst_offset=out.offset)
    return out


def _dev(x: DeviceOrHost, name: str) -> cl_array.Array:
    if isinstance(x, cl_array.Array) and x.dtype != np.float32:
        raise InvalidArgumentError(f"{name} must be float32 on the device; got {x.dtype}")
    return to_device(x)


def _off(a: cl_array.Array) -> np.int32:
    return np.int32(a.offset // 4)


def _out(out: cl_array.Array | None, shape: tuple[int, ...], name: str) -> cl_array.Array:
    if out is None:
        return empty(shape)
    if tuple(out.shape) != shape or not _guarded(out):
        raise InvalidArgumentError(
            f"{name}: out must be a guarded float32 array of shape {shape} (from nn_ops.empty); got {out.shape}"
        )
    return out


def _launch(kernel: cl.Kernel, gsize: tuple[int, ...], lsize: tuple[int, ...], *args: Any) -> cl.Event:
    kernel.set_args(*args)
    return cl.enqueue_nd_range_kernel(_rt().queue, kernel, gsize, lsize)


# --- weights ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvWeights:
    """Conv weights packed for ``nn_conv``: ``[ceil(Co/tco)][Ci*kh*kw][tco]`` float32 plus a zero-padded bias.

    Attributes:
        shape: the logical weight shape ``(Co, Ci, kh, kw)`` (``kh = 1`` for a 1-D conv's ``(Co, Ci, k)``).
        tco: output channels per work-item the packing is for.
        has_bias: whether a bias was given.
        weight: the packed weights on the device.
        bias: the padded bias on the device (zeros without one).
    """

    shape: tuple[int, int, int, int]
    tco: int
    has_bias: bool
    weight: cl.Buffer
    bias: cl.Buffer

    @classmethod
    def pack(
        cls, weight: np.ndarray, bias: np.ndarray | None = None, tco: int | None = None, dims: int | None = None
    ) -> ConvWeights:
        """Pack and upload ``weight`` ``(Co, Ci, kh, kw)`` or ``(Co, Ci, k)`` and ``bias`` ``(Co,)``.

        Args:
            weight: float conv weight (dequantized).
            bias: float bias or None.
            tco: output channels per work-item (4, 8 or 16); default by ``Co``.
            dims: 1 or 2 spatial axes; default from ``weight.ndim``.
        """
        w = np.asarray(weight)
        if not np.issubdtype(w.dtype, np.floating):
            raise InvalidArgumentError(f"conv weight must be float; got dtype {w.dtype}")
        dims = dims if dims is not None else w.ndim - 2
        if dims not in (1, 2) or w.ndim != dims + 2 or w.size == 0:
            raise InvalidArgumentError(
                f"conv weight must be a non-empty (Co, Ci, k) or (Co, Ci, kh, kw); got {w.shape}"
            )
        if dims == 1:
            w = w[:, :, None, :]
        co, ci, kh, kw = (int(v) for v in w.shape)
        if bias is not None and np.shape(bias) != (co,):
            raise InvalidArgumentError(f"conv bias shape {np.shape(bias)} must be ({co},)")
        tco = tco if tco is not None else _default_tco(co)
        if tco not in (4, 8, 16):
            raise InvalidArgumentError(f"tco must be 4, 8 or 16; got {tco}")
        blocks = -(-co // tco)
        flat = np.zeros((blocks * tco, ci * kh * kw), dtype=np.float32)
        flat[:co] = w.reshape(co, -1)
        packed = np.ascontiguousarray(flat.reshape(blocks, tco, -1).transpose(0, 2, 1))
        b = np.zeros(blocks * tco, dtype=np.float32)
        if bias is not None:
            b[:co] = np.asarray(bias, dtype=np.float32)
        rt = _rt()
        ro = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        return cls(
            shape=(co, ci, kh, kw),
            tco=tco,
            has_bias=bias is not None,
            weight=cl.Buffer(rt.context, ro, hostbuf=packed),
            bias=cl.Buffer(rt.context, ro, hostbuf=b),
        )


def _default_tco(co: int) -> int:
    # Measured on PoCL (AVX-512): 16 channels per work-item beat 8 by 5-10 % when no padding is wasted.
    if _rt().is_xilinx:
        return 8
    if co % 16 == 0:
        return 16
    return 8 if co > 4 else 4


@dataclass(frozen=True)
class LinearWeights:
    """Linear weights ``(M, F)`` row-major float32 and bias on the device.

    Attributes:
        shape: ``(M, F)``.
        has_bias: whether a bias was given.
        weight: the weights on the device.
        bias: the bias on the device (one zero without one).
    """

    shape: tuple[int, int]
    has_bias: bool
    weight: cl.Buffer
    bias: cl.Buffer

    @classmethod
    def pack(cls, weight: np.ndarray, bias: np.ndarray | None = None) -> LinearWeights:
        """Upload a float ``(M, F)`` weight and an optional ``(M,)`` bias."""
        w = np.asarray(weight)
        if not np.issubdtype(w.dtype, np.floating) or w.ndim != 2 or w.size == 0:
            raise InvalidArgumentError(f"linear weight must be a non-empty float (M, F); got {w.dtype} {w.shape}")
        if bias is not None and np.shape(bias) != (w.shape[0],):
            raise InvalidArgumentError(f"linear bias shape {np.shape(bias)} must be ({w.shape[0]},)")
        rt = _rt()
        ro = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        b = np.zeros(1, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        return cls(
            shape=(int(w.shape[0]), int(w.shape[1])),
            has_bias=bias is not None,
            weight=cl.Buffer(rt.context, ro, hostbuf=np.ascontiguousarray(w, dtype=np.float32)),
            bias=cl.Buffer(rt.context, ro, hostbuf=b),
        )


# --- convolution --------------------------------------------------------------------------------------------------


def _conv_config(
    rt: OpenCLRuntime, wo: int, kh: int, kw: int, sw: int, pw: int, tco: int
) -> tuple[int, tuple[str, ...]]:
    """Pixels per work-item and build options of ``nn_conv`` for one conv shape.

    On PoCL the tile and the conv's kernel size and stride are compile-time constants (a program per shape class,
    built once per process); the vector-load paths need ``pw + 2 * tp + kw <= GUARD`` floats of slack, else the
    masked gather path (``NN_SW=0``) is used. An FPGA xclbin is built from the source as is (tp 16, tco 8, runtime
    sizes), so there the options are empty.
    """
    if rt.is_xilinx:
        if tco != 8:
            raise InvalidArgumentError("on an FPGA xclbin conv weights must be packed with tco=8")
        return 16, ()
    tp = 16 if wo >= 12 else 8 if wo >= 5 else 4
    vector_safe = sw in (1, 2) and pw + 2 * tp + kw <= GUARD
    options = (
        f"-DNN_TP={tp}",
        f"-DNN_TCO={tco}",
        f"-DNN_KH={kh}",
        f"-DNN_KW={kw}",
        f"-DNN_SW={sw if vector_safe else 0}",
    )
    return tp, options


def _conv(
    x: DeviceOrHost,
    weight: np.ndarray | ConvWeights,
    bias: np.ndarray | None,
    stride: IntPair,
    padding: IntPair,
    relu: bool,
    residual: DeviceOrHost | None,
    out: cl_array.Array | None,
    dims: int,
) -> cl_array.Array:
    packed = weight if isinstance(weight, ConvWeights) else None
    if packed is not None:
        if bias is not None:
            raise InvalidArgumentError("pass the bias to ConvWeights.pack, not with packed weights")
        co, ci, kh, kw = packed.shape
        w_shape: tuple[int, ...] = (co, ci, kw) if dims == 1 else packed.shape
        if dims == 1 and kh != 1:
            raise InvalidArgumentError(f"packed weights of shape {packed.shape} are not a 1-D conv's")
    else:
        w_shape = tuple(np.shape(weight))
    x_shape = tuple(x.shape)
    out_shape, s, p = conv_shape(x_shape, w_shape, None if bias is None else np.shape(bias), stride, padding, dims)
    if residual is not None:
        same_shape(tuple(residual.shape), out_shape, "conv residual")
    if packed is None:
        packed = ConvWeights.pack(np.asarray(weight), bias, dims=dims)
    xd = _dev(x, "conv input")
    res = None if residual is None else _dev(residual, "conv residual")
    o = _out(out, out_shape, "conv")
    if dims == 1:
        n, c, h, w_in = x_shape[0], x_shape[1], 1, x_shape[2]
        ho, wo = 1, out_shape[2]
        sh, sw, ph, pw = 1, s[0], 0, p[0]
    else:
        n, c, h, w_in = x_shape
        ho, wo = out_shape[2], out_shape[3]
        (sh, sw), (ph, pw) = s, p
    co, _, kh, kw = packed.shape
    rt = _rt()
    tp, options = _conv_config(rt, wo, kh, kw, sw, pw, packed.tco)
    kernel = rt.kernel(_SOURCE, "nn_conv", options)
    rows = n * ho * (-(-wo // tp))
    gsize = (round_up(rows, _CONV_WG), -(-co // packed.tco))
    flags = (1 if relu else 0) | (2 if res is not None else 0)
    rbuf = res if res is not None else o
    _launch(
        kernel,
        gsize,
        (_CONV_WG, 1),
        xd.base_data,
        _off(xd),
        packed.weight,
        packed.bias,
        rbuf.base_data,
        _off(rbuf),
        o.base_data,
        _off(o),
        *(np.int32(v) for v in (n, c, h, w_in, co, ho, wo, kh, kw, sh, sw, ph, pw, flags)),
    )
    return o


def conv2d(
    x: DeviceOrHost,
    weight: np.ndarray | ConvWeights,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    relu: bool = False,
    residual: DeviceOrHost | None = None,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """2-D convolution on the device; see :func:`nessa.accel.reference.nn.conv2d`.

    Args:
        x: ``(N, C, H, W)`` float32.
        weight: ``(Co, C, kh, kw)`` float or :class:`ConvWeights` (then ``bias`` must be None: it is packed).
        bias: ``(Co,)`` or None.
        stride: one value or ``(sh, sw)``.
        padding: one value or ``(ph, pw)`` (zeros).
        relu: apply ReLU last.
        residual: ``(N, Co, Ho, Wo)`` added before the ReLU.
        out: a guarded device array of the output shape to write into.

    Returns:
        ``(N, Co, Ho, Wo)`` device array.
    """
    return _conv(x, weight, bias, stride, padding, relu, residual, out, 2)


def conv1d(
    x: DeviceOrHost,
    weight: np.ndarray | ConvWeights,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    *,
    relu: bool = False,
    residual: DeviceOrHost | None = None,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """1-D convolution of ``(N, C, L)`` on the device (the 2-D kernel with H = 1); see :func:`conv2d`."""
    return _conv(x, weight, bias, stride, padding, relu, residual, out, 1)


# --- linear and elementwise ---------------------------------------------------------------------------------------


def linear(
    x: DeviceOrHost,
    weight: np.ndarray | LinearWeights,
    bias: np.ndarray | None = None,
    *,
    relu: bool = False,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """``x @ weight.T + bias`` (optional ReLU) on the device; ``x`` ``(N, F)``, ``weight`` ``(M, F)``."""
    if isinstance(weight, LinearWeights):
        if bias is not None:
            raise InvalidArgumentError("pass the bias to LinearWeights.pack, not with packed weights")
        w_shape: tuple[int, ...] = weight.shape
    else:
        w_shape = tuple(np.shape(weight))
    n, m = linear_shape(tuple(x.shape), w_shape, None if bias is None else np.shape(bias))
    packed = weight if isinstance(weight, LinearWeights) else LinearWeights.pack(np.asarray(weight), bias)
    xd = _dev(x, "linear input")
    o = _out(out, (n, m), "linear")
    f = int(w_shape[1])
    rt = _rt()
    g0, g1 = -(-n // 4), -(-m // 4)
    l0 = 8
    _launch(
        rt.kernel(_SOURCE, "nn_linear"),
        (round_up(g0, l0), g1),
        (l0, 1),
        xd.base_data,
        _off(xd),
        packed.weight,
        packed.bias,
        np.int32(packed.has_bias),
        o.base_data,
        _off(o),
        np.int32(n),
        np.int32(f),
        np.int32(m),
        np.int32(1 if relu else 0),
    )
    return o


def _elementwise_size(n: int) -> tuple[tuple[int], tuple[int]]:
    return (round_up(n, _ELEMENTWISE_WG),), (_ELEMENTWISE_WG,)


def relu(x: DeviceOrHost, *, out: cl_array.Array | None = None) -> cl_array.Array:
    """``max(x, 0)`` elementwise on the device."""
    if math.prod(x.shape) == 0 or len(x.shape) == 0:
        raise InvalidArgumentError("relu got an empty array")
    xd = _dev(x, "relu input")
    o = _out(out, tuple(x.shape), "relu")
    g, lsz = _elementwise_size(xd.size)
    _launch(_rt().kernel(_SOURCE, "nn_relu"), g, lsz, xd.base_data, _off(xd), o.base_data, _off(o), np.int32(xd.size))
    return o


def add(a: DeviceOrHost, b: DeviceOrHost, *, relu: bool = False, out: cl_array.Array | None = None) -> cl_array.Array:
    """``a + b`` (equal shapes), optionally ReLU, on the device."""
    same_shape(tuple(a.shape), tuple(b.shape), "add")
    ad, bd = _dev(a, "add operand"), _dev(b, "add operand")
    o = _out(out, tuple(a.shape), "add")
    g, lsz = _elementwise_size(ad.size)
    _launch(
        _rt().kernel(_SOURCE, "nn_add"),
        g,
        lsz,
        ad.base_data,
        _off(ad),
        bd.base_data,
        _off(bd),
        o.base_data,
        _off(o),
        np.int32(ad.size),
        np.int32(1 if relu else 0),
    )
    return o


# --- pooling ------------------------------------------------------------------------------------------------------


def _pool(
    x: DeviceOrHost,
    kernel_size: IntPair,
    stride: IntPair | None,
    padding: IntPair,
    dims: int,
    mode: int,
    out: cl_array.Array | None,
) -> cl_array.Array:
    out_shape, k, s, p = pool_shape(tuple(x.shape), kernel_size, stride, padding, dims)
    xd = _dev(x, "pool input")
    o = _out(out, out_shape, "pool")
    if dims == 1:
        h, w, ho, wo = 1, x.shape[2], 1, out_shape[2]
        kh, kw, sh, sw, ph, pw = 1, k[0], 1, s[0], 0, p[0]
    else:
        h, w, ho, wo = x.shape[2], x.shape[3], out_shape[2], out_shape[3]
        (kh, kw), (sh, sw), (ph, pw) = k, s, p
    nc = int(x.shape[0]) * int(x.shape[1])
    g, lsz = _elementwise_size(nc * ho * wo)
    _launch(
        _rt().kernel(_SOURCE, "nn_pool"),
        g,
        lsz,
        xd.base_data,
        _off(xd),
        o.base_data,
        _off(o),
        *(np.int32(v) for v in (nc, h, w, ho, wo, kh, kw, sh, sw, ph, pw, mode)),
    )
    return o


def maxpool2d(
    x: DeviceOrHost,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """Max pooling of ``(N, C, H, W)`` on the device (padding counts as -inf; stride defaults to the kernel)."""
    return _pool(x, kernel_size, stride, padding, 2, 0, out)


def maxpool1d(
    x: DeviceOrHost,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """Max pooling of ``(N, C, L)`` on the device."""
    return _pool(x, kernel_size, stride, padding, 1, 0, out)


def avgpool2d(
    x: DeviceOrHost,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """Average pooling of ``(N, C, H, W)`` on the device (zero padding counted in the divisor)."""
    return _pool(x, kernel_size, stride, padding, 2, 1, out)


def avgpool1d(
    x: DeviceOrHost,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """Average pooling of ``(N, C, L)`` on the device."""
    return _pool(x, kernel_size, stride, padding, 1, 1, out)


def global_avgpool(x: DeviceOrHost, *, out: cl_array.Array | None = None) -> cl_array.Array:
    """Mean over every spatial axis on the device: ``(N, C, ...)`` to ``(N, C)``."""
    if len(x.shape) < 3 or math.prod(x.shape) == 0:
        raise InvalidArgumentError(f"global_avgpool needs a non-empty (N, C, ...) input; got shape {tuple(x.shape)}")
    xd = _dev(x, "global_avgpool input")
    n, c = int(x.shape[0]), int(x.shape[1])
    o = _out(out, (n, c), "global_avgpool")
    g, lsz = _elementwise_size(n * c)
    _launch(
        _rt().kernel(_SOURCE, "nn_global_avgpool"),
        g,
        lsz,
        xd.base_data,
        _off(xd),
        o.base_data,
        _off(o),
        np.int32(n * c),
        np.int32(xd.size // (n * c)),
    )
    return o


def flatten(x: DeviceOrHost) -> cl_array.Array:
    """``(N, ...)`` to ``(N, prod(...))``: a view of the same device memory (no kernel)."""
    if len(x.shape) < 1 or math.prod(x.shape) == 0:
        raise InvalidArgumentError(f"flatten got an empty array of shape {tuple(x.shape)}")
    xd = _dev(x, "flatten input")
    return xd.reshape(int(x.shape[0]), -1)


# --- input and head -----------------------------------------------------------------------------------------------


def normalize(
    x: np.ndarray | cl_array.Array,
    mean: np.ndarray,
    std: np.ndarray,
    scale: float = 1.0,
    *,
    out: cl_array.Array | None = None,
) -> cl_array.Array:
    """``(x * scale - mean[c]) / std[c]`` on the device for a uint8 or float batch ``(N, C, ...)``.

    A numpy batch is uploaded as is (uint8 samples cross to the device as bytes). Empty ``mean``/``std`` mean no
    normalization.
    """
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    sd = np.asarray(std, dtype=np.float32).reshape(-1)
    if m.size == 0 and sd.size == 0:
        m, sd = np.zeros(1, np.float32), np.ones(1, np.float32)
    shape = tuple(int(v) for v in x.shape)
    norm_shape(shape, m, sd)
    rt = _rt()
    src_args: list[Any]
    if isinstance(x, cl_array.Array):
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            raise InvalidArgumentError(f"device input to normalize must be contiguous float32; got {x.dtype}")
        name, src_args = "nn_normalize_f32", [_buf(x), np.int32(x.offset // 4)]
    else:
        arr = np.asarray(x)
        if arr.dtype == np.uint8:
            name = "nn_normalize_u8"
        elif np.issubdtype(arr.dtype, np.floating):
            arr, name = arr.astype(np.float32, copy=False), "nn_normalize_f32"
        else:
            raise InvalidArgumentError(f"normalize takes uint8 or float samples; got dtype {arr.dtype}")
        src = cl.Buffer(
            rt.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(arr)
        )
        src_args = [src] if name == "nn_normalize_u8" else [src, np.int32(0)]
    o = _out(out, shape, "normalize")
    ro = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
    mb = cl.Buffer(rt.context, ro, hostbuf=m)
    sb = cl.Buffer(rt.context, ro, hostbuf=sd)
    total = math.prod(shape)
    inner = total // (shape[0] * shape[1])
    g, lsz = _elementwise_size(total)
    _launch(
        rt.kernel(_SOURCE, name),
        g,
        lsz,
        *src_args,
        o.base_data,
        _off(o),
        mb,
        sb,
        np.float32(scale),
        np.int32(inner),
        np.int32(shape[1]),
        np.int32(m.size),
        np.int32(total),
    )
    return o


def softmax_xent(
    logits: DeviceOrHost,
    labels: np.ndarray,
    *,
    grad: cl_array.Array | None = None,
    loss: cl_array.Array | None = None,
) -> tuple[cl_array.Array, cl_array.Array]:
    """Fused softmax, last-layer gradient ``softmax(z) - onehot(y)`` and per-sample cross-entropy on the device.

    Args:
        logits: ``(N, C)`` float32.
        labels: ``(N,)`` integers in ``[0, C)`` (host array; checked here).
        grad: optional guarded ``(N, C)`` output.
        loss: optional guarded ``(N,)`` output.

    Returns:
        ``(grad, loss)`` device arrays.
    """
    y = np.asarray(labels)
    shape = tuple(int(v) for v in logits.shape)
    xent_shape(shape, y)
    zd = _dev(logits, "logits")
    n, c = shape
    g = _out(grad, (n, c), "softmax_xent grad")
    lo = _out(loss, (n,), "softmax_xent loss")
    rt = _rt()
    yb = cl.Buffer(
        rt.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(y, np.int64)
    )
    gs, lsz = (round_up(n, 64),), (64,)
    _launch(
        rt.kernel(_SOURCE, "nn_softmax_xent"),
        gs,
        lsz,
        zd.base_data,
        _off(zd),
        yb,
        g.base_data,
        _off(g),
        lo.base_data,
        _off(lo),
        np.int32(n),
        np.int32(c),
    )
    return g, lo
