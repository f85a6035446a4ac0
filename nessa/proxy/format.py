"""The proxy wire format: the :class:`Proxy` wrapper, ``dumps``/``loads``, the checksum and validation.

A proxy is the protobuf message ``nessa.v1.Proxy`` (``proto/nessa/v1/proxy.proto`` documents every field). This
module wraps it with typed accessors, shape inference and the checks a daemon runs before trusting one:

* integrity: the checksum is the lower-case hex SHA-256 of the message serialized deterministically with its
  ``checksum`` field empty. :func:`dumps` writes it; :func:`loads` recomputes and compares it;
* structure: unique names, known ops, no dangling node or tensor reference, no cycle, tensor byte lengths that
  match their shapes, finite weights, scales and normalization, attribute lengths that fit the op, and shapes that
  chain (a conv's input channels match its weight, the output is ``(num_classes,)``);
* fit: :meth:`Proxy.validate` with a dataset's sample shape and class count, and :func:`check_input_dtype` for its
  sample dtype;
* bounds: :func:`check_bounds`: every dimension, stride and padding within :class:`Limits` (a conv's padding at most
  its kernel size), so no proxy can ask an engine for a buffer it cannot allocate;
* cost: :func:`estimate_forward` gives the memory (the peak of the activations live at once, plus the weights as
  float32) and the multiply-adds of a forward pass over one batch, which a daemon caps before accepting a proxy.

Every failure is an :class:`~nessa.errors.InvalidArgumentError` that names the node or tensor and says what to do.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
from google.protobuf.message import DecodeError

from nessa.errors import InvalidArgumentError
from nessa.proxy.quantize import dequantize
from nessa.store.images import IMAGE_CODECS, ImagePrep
from nessa.v1 import proxy_pb2 as pb

__all__ = [
    "FORMAT_VERSION",
    "INPUT",
    "OPS",
    "ForwardCost",
    "Limits",
    "Normalization",
    "Proxy",
    "check_bounds",
    "check_input_dtype",
    "dumps",
    "estimate_forward",
    "loads",
    "sample_layout",
]

#: Version of the message layout this code reads and writes.
FORMAT_VERSION = 1
#: The name node inputs use for the proxy's (normalized) input.
INPUT = "input"

#: Op names of the vocabulary, by wire enum.
OPS: dict[int, str] = {
    pb.OP_CONV1D: "conv1d",
    pb.OP_CONV2D: "conv2d",
    pb.OP_LINEAR: "linear",
    pb.OP_RELU: "relu",
    pb.OP_ADD: "add",
    pb.OP_MAXPOOL: "maxpool",
    pb.OP_AVGPOOL: "avgpool",
    pb.OP_GLOBAL_AVGPOOL: "global_avgpool",
    pb.OP_FLATTEN: "flatten",
    pb.OP_GELU: "gelu",
    pb.OP_SILU: "silu",
    pb.OP_SIGMOID: "sigmoid",
    pb.OP_TANH: "tanh",
    pb.OP_SOFTMAX: "softmax",
    pb.OP_LAYERNORM: "layernorm",
    pb.OP_GROUPNORM: "groupnorm",
    pb.OP_MATMUL: "matmul",
    pb.OP_ATTENTION: "attention",
    pb.OP_RESHAPE: "reshape",
    pb.OP_PERMUTE: "permute",
    pb.OP_CONCAT: "concat",
    pb.OP_MUL: "mul",
    pb.OP_SCALE: "scale",
    pb.OP_CONSTANT: "constant",
    pb.OP_EMBEDDING: "embedding",
    pb.OP_SLICE: "slice",
    pb.OP_MEAN: "mean",
}
#: Elementwise ops of one input and no attributes but their kind (the activations).
UNARY = ("relu", "gelu", "silu", "sigmoid", "tanh")
_OP_BY_NAME: dict[str, pb.OpType] = {v: cast(pb.OpType, k) for k, v in OPS.items()}
_WEIGHTED = {"conv1d", "conv2d", "linear"}
_POOLS = {"maxpool", "avgpool"}
_N_INPUTS = {"add": 2, "mul": 2, "matmul": 2, "attention": 3, "constant": 0}
#: Ops that take a weight tensor other than conv/linear (a bias is optional where the op has one).
_TENSOR_OPS = {"layernorm", "groupnorm", "embedding", "constant"}
#: Ops with ``dims`` attributes.
_DIMS_OPS = {"reshape", "permute", "concat", "slice", "mean"}
#: The only readers of a constant node.
_CONSTANT_READERS = {"add", "mul", "concat"}
#: Ops beyond the first vocabulary that take no weight.
_NEW_PLAIN = {"gelu", "silu", "sigmoid", "tanh", "softmax", "matmul", "attention", "mul", "scale", *_DIMS_OPS}
_SAMPLE_DTYPES: dict[int, np.dtype] = {pb.DTYPE_FLOAT32: np.dtype(np.float32), pb.DTYPE_UINT8: np.dtype(np.uint8)}
_DTYPE_NAMES: dict[str, pb.DType] = {"float32": pb.DTYPE_FLOAT32, "uint8": pb.DTYPE_UINT8}
_ITEMSIZE = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_INT8: 1}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Normalization:
    """How a stored sample becomes the model's input: ``x = (raw * scale - mean[c]) / std[c]``.

    Attributes:
        mean: empty (none), one value (every element) or one per channel (axis 0 of the per-sample shape).
        std: same length as ``mean``; non-zero.
        dtype: dtype of the raw stored samples: ``"float32"`` or ``"uint8"``.
        scale: applied to the raw value first, e.g. ``1/255`` for uint8 images.
    """

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    dtype: Literal["float32", "uint8"] = "float32"
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.dtype not in _DTYPE_NAMES:
            raise InvalidArgumentError(
                f"normalization dtype {self.dtype!r} is not supported; use one of {sorted(_DTYPE_NAMES)}"
            )
        _check_normalization(self.mean, self.std, float(self.scale), shape=None)


def _check_normalization(mean: Sequence[float], std: Sequence[float], scale: float, shape: Shape | None) -> None:
    if not math.isfinite(scale) or scale == 0.0:
        raise InvalidArgumentError(f"input scale must be finite and non-zero; got {scale}")
    if len(mean) != len(std):
        raise InvalidArgumentError(
            f"normalization mean and std need the same length; got {len(mean)} and {len(std)} values"
        )
    if shape is not None and len(mean) not in (0, 1, shape[0]):
        raise InvalidArgumentError(
            f"normalization has {len(mean)} values but the input shape {shape} has {shape[0]} channels; "
            "give one value, one per channel, or none"
        )
    if not all(math.isfinite(v) for v in mean):
        raise InvalidArgumentError("normalization mean has NaN or Inf values")
    if not all(math.isfinite(v) and v != 0.0 for v in std):
        raise InvalidArgumentError("normalization std must be finite and non-zero")


def sample_layout(sample_shape: Sequence[int], input_shape: Sequence[int]) -> Literal["same", "hwc", "reshape"] | None:
    """How samples of ``sample_shape`` map to a proxy whose input is ``input_shape``, or ``None`` if they cannot.

    ``"same"``: equal shapes. ``"hwc"``: channel-last images of a channel-first input (``(H, W, C)`` for
    ``(C, H, W)``, as decoded PNG/JPEG images are); they are transposed. ``"reshape"``: the same number of elements
    in another shape (MNIST-1D's stored ``(40,)`` for a 1-D CNN's ``(1, 40)``); they are reshaped in order.
    """
    s = tuple(int(v) for v in sample_shape)
    t = tuple(int(v) for v in input_shape)
    if s == t:
        return "same"
    if len(t) == 3 and s == (t[1], t[2], t[0]):
        return "hwc"
    if math.prod(s) == math.prod(t) and math.prod(t) > 0:
        return "reshape"
    return None


class Proxy:
    """A model proxy: typed access to a ``nessa.v1.Proxy`` message.

    Build one with :func:`nessa.proxy.export` or :func:`loads`; do not mutate :attr:`message` afterwards (the
    decoded tensors are cached).

    Args:
        message: the protobuf message.
    """

    def __init__(self, message: pb.Proxy) -> None:
        self._msg = message
        self._tensors: dict[str, np.ndarray] = {}
        self._shapes: dict[str, Shape] | None = None
        self._validated = False

    # --- plain fields -------------------------------------------------------------------------------------------

    @property
    def message(self) -> pb.Proxy:
        """The underlying protobuf message (read-only by convention)."""
        return self._msg

    @property
    def version(self) -> int:
        """The proxy's version (the trainer's epoch)."""
        return int(self._msg.version)

    @property
    def num_classes(self) -> int:
        """Number of classes (the logits' width)."""
        return int(self._msg.num_classes)

    @property
    def input_shape(self) -> Shape:
        """Per-sample input shape the graph consumes, e.g. ``(3, 32, 32)``."""
        return tuple(int(v) for v in self._msg.input.shape)

    @property
    def input_dtype(self) -> np.dtype:
        """Dtype of the raw samples the proxy accepts (``float32`` or ``uint8``)."""
        dt = _SAMPLE_DTYPES.get(self._msg.input.dtype)
        if dt is None:
            raise InvalidArgumentError(
                f"proxy input dtype {pb.DType.Name(self._msg.input.dtype)} is not a sample dtype; "
                "export with normalization dtype 'float32' or 'uint8'"
            )
        return dt

    @property
    def normalization(self) -> Normalization:
        """The input normalization."""
        spec = self._msg.input
        dtype: Literal["float32", "uint8"] = "uint8" if self.input_dtype == np.uint8 else "float32"
        return Normalization(mean=tuple(spec.mean), std=tuple(spec.std), dtype=dtype, scale=float(spec.scale))

    @property
    def image_prep(self) -> ImagePrep | None:
        """How the daemon decodes encoded-image samples for this proxy (``None``: as stored)."""
        return ImagePrep.from_message(self._msg.input.image)

    @property
    def output(self) -> str:
        """Name of the node whose output is the logits."""
        return str(self._msg.output)

    @property
    def embedding(self) -> str:
        """Name of the node whose output is the embedding (or :data:`INPUT`)."""
        return str(self._msg.embedding)

    @property
    def producer(self) -> str:
        """Free text naming what produced the proxy."""
        return str(self._msg.producer)

    @property
    def checksum(self) -> str:
        """The stored checksum (empty until :func:`dumps` or :meth:`seal`)."""
        return str(self._msg.checksum)

    @property
    def nodes(self) -> list[pb.Node]:
        """The graph's nodes in stored order."""
        return list(self._msg.nodes)

    @property
    def program(self) -> bytes:
        """The torch.export program the proxy carries instead of a graph (``b""`` for a graph proxy)."""
        return bytes(self._msg.program)

    @property
    def program_reason(self) -> str:
        """Why the proxy is a program: the first op outside the vocabulary and its module path."""
        return str(self._msg.program_reason)

    @property
    def head_only(self) -> bool:
        """Whether the proxy carries per-sample features as its inputs (``export(..., head_only=True)``)."""
        return self._msg.HasField("features")

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, features)`` of a head-only proxy: int64 ``(n,)`` and float32 ``(n, *input_shape)``."""
        t = self._msg.features
        shape = tuple(int(v) for v in t.shape)
        if t.dtype != pb.DTYPE_FLOAT32 or len(t.data) != 4 * math.prod(shape):
            raise InvalidArgumentError("the proxy's features must be float32 with data matching their shape")
        return (
            np.asarray(self._msg.feature_indices, dtype=np.int64),
            np.frombuffer(t.data, dtype="<f4").astype(np.float32).reshape(shape),
        )

    @property
    def quantized(self) -> bool:
        """Whether any weight is stored as int8."""
        return any(t.dtype == pb.DTYPE_INT8 for t in self._msg.tensors)

    def op(self, node: pb.Node) -> str:
        """The op name (``"conv2d"``, ...) of ``node``."""
        name = OPS.get(node.op)
        if name is None:
            raise InvalidArgumentError(
                f"proxy node {node.name!r} has unknown op {node.op}; the supported ops are: {', '.join(OPS.values())}"
            )
        return name

    def __repr__(self) -> str:
        return (
            f"Proxy(version={self.version}, input={self.input_shape}, classes={self.num_classes}, "
            f"nodes={len(self._msg.nodes)}, quantized={self.quantized})"
        )

    # --- tensors ------------------------------------------------------------------------------------------------

    def _tensor_msg(self, name: str) -> pb.Tensor:
        for t in self._msg.tensors:
            if t.name == name:
                return t
        raise InvalidArgumentError(f"proxy has no tensor named {name!r}; re-export the proxy")

    def tensor_raw(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The stored tensor ``name`` as ``(values, scales)``: int8 values with float32 scales, or float32 and None."""
        t = self._tensor_msg(name)
        shape = tuple(int(v) for v in t.shape)
        itemsize = _ITEMSIZE.get(t.dtype)
        if itemsize is None:
            raise InvalidArgumentError(
                f"proxy tensor {name!r} has dtype {pb.DType.Name(t.dtype)}; tensors must be FLOAT32 or INT8"
            )
        if len(t.data) != math.prod(shape) * itemsize:
            raise InvalidArgumentError(
                f"proxy tensor {name!r} holds {len(t.data)} bytes but its shape {shape} needs "
                f"{math.prod(shape) * itemsize}; the proxy is corrupt, re-export it"
            )
        if t.dtype == pb.DTYPE_INT8:
            return np.frombuffer(t.data, dtype=np.int8).reshape(shape), np.asarray(t.scales, dtype=np.float32)
        return np.frombuffer(t.data, dtype="<f4").astype(np.float32).reshape(shape), None

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32 (int8 tensors dequantized per output channel), read-only and cached."""
        cached = self._tensors.get(name)
        if cached is not None:
            return cached
        values, scales = self.tensor_raw(name)
        arr = dequantize(values, scales) if scales is not None else values.copy()
        arr.setflags(write=False)
        self._tensors[name] = arr
        return arr

    # --- checksum -----------------------------------------------------------------------------------------------

    def compute_checksum(self) -> str:
        """SHA-256 (hex) of the message serialized deterministically with the ``checksum`` field empty."""
        copy = pb.Proxy()
        copy.CopyFrom(self._msg)
        copy.checksum = ""
        return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()

    def seal(self) -> Proxy:
        """Write the checksum into the message (done by :func:`dumps` and export); returns ``self``."""
        self._msg.checksum = self.compute_checksum()
        return self

    # --- graph --------------------------------------------------------------------------------------------------

    def order(self) -> list[pb.Node]:
        """The nodes in a topological order (inputs before their consumers).

        Raises:
            InvalidArgumentError: a dangling input reference or a cycle.
        """
        nodes = {n.name: n for n in self._msg.nodes}
        indegree = {name: 0 for name in nodes}
        users: dict[str, list[str]] = {name: [] for name in nodes}
        for n in self._msg.nodes:
            for src in n.inputs:
                if src == INPUT:
                    continue
                if src not in nodes:
                    raise InvalidArgumentError(
                        f"proxy node {n.name!r} reads {src!r}, which is neither a node nor {INPUT!r}; "
                        "the graph is broken, re-export the proxy"
                    )
                indegree[n.name] += 1
                users[src].append(n.name)
        ready = [n.name for n in self._msg.nodes if indegree[n.name] == 0]
        order: list[pb.Node] = []
        while ready:
            name = ready.pop(0)
            order.append(nodes[name])
            for u in users[name]:
                indegree[u] -= 1
                if indegree[u] == 0:
                    ready.append(u)
        if len(order) != len(nodes):
            stuck = sorted(name for name, d in indegree.items() if d > 0)
            raise InvalidArgumentError(
                f"proxy graph has a cycle through nodes {stuck}; a proxy must be acyclic, re-export it"
            )
        return order

    def shapes(self) -> dict[str, Shape]:
        """Per-sample output shape of every node (and of :data:`INPUT`), checked op by op."""
        if self._shapes is None:
            self._shapes = self._infer_shapes()
        return dict(self._shapes)

    def _infer_shapes(self) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {INPUT: self.input_shape}
        constants = {n.name for n in self._msg.nodes if n.op == pb.OP_CONSTANT}
        for node in self.order():
            op = self.op(node)
            if op not in _CONSTANT_READERS and any(s in constants for s in node.inputs):
                raise InvalidArgumentError(
                    f"proxy node {node.name!r} ({op}) reads a constant node; constants feed only "
                    f"{', '.join(sorted(_CONSTANT_READERS))}"
                )
            shapes[node.name] = self._node_shape(node, [shapes[s] for s in node.inputs])
        for name in (self._msg.output, self._msg.embedding):
            if name in constants:
                raise InvalidArgumentError(f"proxy output or embedding {name!r} is a constant node")
        return shapes

    def _node_shape(self, node: pb.Node, ins: list[Shape]) -> Shape:
        op = self.op(node)
        where = f"proxy node {node.name!r} ({op}{', from ' + node.source if node.source else ''})"
        if op == "concat":
            if len(ins) < 2:
                raise InvalidArgumentError(f"{where} has {len(ins)} inputs but concat takes two or more")
        else:
            need = _N_INPUTS.get(op, 1)
            if len(ins) != need:
                raise InvalidArgumentError(f"{where} has {len(ins)} inputs but {op} takes {need}")
        if op not in _DIMS_OPS and node.dims:
            raise InvalidArgumentError(f"{where} sets dims, which {op} does not take")
        if op in _TENSOR_OPS or op in _NEW_PLAIN:
            return self._extended_shape(node, op, ins, where)
        x = ins[0]
        if op in _WEIGHTED:
            if not node.weight:
                raise InvalidArgumentError(f"{where} names no weight tensor")
            wshape = tuple(int(v) for v in self._tensor_msg(node.weight).shape)
            if node.bias:
                bshape = tuple(int(v) for v in self._tensor_msg(node.bias).shape)
                if bshape != (wshape[0],):
                    raise InvalidArgumentError(f"{where}: bias shape {bshape} does not match weight shape {wshape}")
            if op == "linear":
                if len(wshape) != 2 or len(x) < 1 or x[-1] != wshape[1]:
                    raise InvalidArgumentError(
                        f"{where}: weight {wshape} needs an input of {wshape[1] if len(wshape) == 2 else '?'} "
                        f"features on its last axis but gets shape {x}; re-export"
                    )
                return (*x[:-1], wshape[0])
            dims = 1 if op == "conv1d" else 2
            if len(wshape) != dims + 2:
                raise InvalidArgumentError(f"{where}: weight shape {wshape} is not a {op} weight")
            if len(x) != dims + 1 or x[0] != wshape[1]:
                raise InvalidArgumentError(
                    f"{where}: weight {wshape} needs an input of {wshape[1]} channels and {dims} spatial axes "
                    f"but gets shape {x}"
                )
            stride = self._attr(node, "stride", dims, default=1, where=where, minimum=1)
            padding = self._attr(node, "padding", dims, default=0, where=where, minimum=0)
            if node.kernel_size:
                raise InvalidArgumentError(f"{where}: convs take the kernel size from the weight; kernel_size is set")
            out = [(x[1 + i] + 2 * padding[i] - wshape[2 + i]) // stride[i] + 1 for i in range(dims)]
            if any(o < 1 for o in out):
                raise InvalidArgumentError(f"{where}: kernel {wshape[2:]} does not fit input {x} (padding {padding})")
            return (wshape[0], *out)
        if node.weight or node.bias:
            raise InvalidArgumentError(f"{where} carries weights, but {op} takes none")
        if op in ("relu", "flatten", "global_avgpool") and (node.kernel_size or node.stride or node.padding):
            raise InvalidArgumentError(f"{where} sets kernel_size/stride/padding, which {op} does not take")
        if op == "relu":
            return x
        if op == "add":
            return _broadcast(ins[0], ins[1], where)
        if op == "flatten":
            return (math.prod(x),)
        if op == "global_avgpool":
            if len(x) < 2:
                raise InvalidArgumentError(f"{where}: input {x} has no spatial axis to pool")
            return (x[0],)
        # maxpool / avgpool
        if len(x) not in (2, 3):
            raise InvalidArgumentError(f"{where}: input {x} must be (C, L) or (C, H, W)")
        dims = len(x) - 1
        kernel = self._attr(node, "kernel_size", dims, default=None, where=where, minimum=1)
        stride = self._attr(node, "stride", dims, default=kernel, where=where, minimum=1)
        padding = self._attr(node, "padding", dims, default=0, where=where, minimum=0)
        if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
            raise InvalidArgumentError(f"{where}: padding {padding} is more than half the kernel {kernel}")
        out = [(x[1 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(dims)]
        if any(o < 1 for o in out):
            raise InvalidArgumentError(f"{where}: kernel {kernel} does not fit input {x}")
        return (x[0], *out)

    def _extended_shape(self, node: pb.Node, op: str, ins: list[Shape], where: str) -> Shape:
        """Output shape of the ops beyond conv/linear/pool (activations, norms, attention, layout ops)."""
        if node.kernel_size or node.stride or node.padding:
            raise InvalidArgumentError(f"{where} sets kernel_size/stride/padding, which {op} does not take")
        wshape: Shape = ()
        if op in _TENSOR_OPS:
            if not node.weight:
                raise InvalidArgumentError(f"{where} names no weight tensor")
            wshape = tuple(int(v) for v in self._tensor_msg(node.weight).shape)
            if node.bias:
                if op not in ("layernorm", "groupnorm"):
                    raise InvalidArgumentError(f"{where} carries a bias, which {op} does not take")
                bshape = tuple(int(v) for v in self._tensor_msg(node.bias).shape)
                if bshape != wshape:
                    raise InvalidArgumentError(f"{where}: bias shape {bshape} does not match weight shape {wshape}")
        elif node.weight or node.bias:
            raise InvalidArgumentError(f"{where} carries weights, but {op} takes none")
        if op in ("layernorm", "groupnorm") and not (math.isfinite(node.eps) and node.eps > 0):
            raise InvalidArgumentError(f"{where}: eps must be finite and positive; got {node.eps}")
        if op == "scale" and not (math.isfinite(node.alpha) and math.isfinite(node.beta)):
            raise InvalidArgumentError(f"{where}: alpha and beta must be finite")
        if op == "attention" and not (math.isfinite(node.alpha) and node.alpha >= 0):
            raise InvalidArgumentError(f"{where}: alpha must be finite and >= 0 (0: 1/sqrt(d))")
        if op == "constant":
            return wshape
        x = ins[0] if ins else ()
        dims = [int(v) for v in node.dims]
        if op in UNARY or op in ("softmax", "scale"):
            return x
        if op == "layernorm":
            if wshape != (x[-1],):
                raise InvalidArgumentError(f"{where}: weight {wshape} must be ({x[-1]},) for input {x}")
            return x
        if op == "groupnorm":
            if len(x) < 2 or wshape != (x[0],) or node.groups < 1 or x[0] % node.groups:
                raise InvalidArgumentError(
                    f"{where}: needs (C, ...) input, weight (C,) and groups dividing C; got input {x}, weight "
                    f"{wshape}, groups {node.groups}"
                )
            return x
        if op == "embedding":
            if len(wshape) != 2:
                raise InvalidArgumentError(f"{where}: weight {wshape} must be (V, D)")
            return (*x, wshape[1])
        if op == "mul":
            return _broadcast(ins[0], ins[1], where)
        if op == "matmul":
            a, b = ins
            if len(a) < 2 or len(b) < 2 or a[:-2] != b[:-2] or a[-1] != b[-2]:
                raise InvalidArgumentError(f"{where}: cannot multiply shapes {a} and {b}")
            return (*a[:-1], b[-1])
        if op == "attention":
            q, k, v = ins
            if len(q) < 2 or not (q[:-2] == k[:-2] == v[:-2]) or q[-1] != k[-1] or k[-2] != v[-2]:
                raise InvalidArgumentError(
                    f"{where}: q {q}, k {k}, v {v} do not fit (..., T, d), (..., S, d), (..., S, e)"
                )
            return (*q[:-1], v[-1])
        if op == "reshape":
            if not dims or any(d < 1 for d in dims) or math.prod(dims) != math.prod(x):
                raise InvalidArgumentError(f"{where}: cannot reshape {x} to {tuple(dims)}")
            return tuple(dims)
        if op == "permute":
            if sorted(dims) != list(range(len(x))):
                raise InvalidArgumentError(f"{where}: dims {dims} is not a permutation of the axes of {x}")
            return tuple(x[d] for d in dims)
        if op == "concat":
            if len(dims) != 1 or not 0 <= dims[0] < len(x):
                raise InvalidArgumentError(f"{where}: dims must hold one axis of {x}; got {dims}")
            axis = dims[0]
            for other in ins[1:]:
                if len(other) != len(x) or any(
                    o != v for i, (o, v) in enumerate(zip(other, x, strict=True)) if i != axis
                ):
                    raise InvalidArgumentError(f"{where}: cannot concatenate {x} and {other} along axis {axis}")
            return (*x[:axis], sum(s[axis] for s in ins), *x[axis + 1 :])
        if op == "slice":
            if len(dims) != 3 or not 0 <= dims[0] < len(x) or not 0 <= dims[1] < dims[2] <= x[dims[0]]:
                raise InvalidArgumentError(f"{where}: dims must be [axis, start, stop] within {x}; got {dims}")
            axis = dims[0]
            return (*x[:axis], dims[2] - dims[1], *x[axis + 1 :])
        # mean
        if not dims or len(set(dims)) != len(dims) or any(not 0 <= d < len(x) for d in dims) or len(dims) == len(x):
            raise InvalidArgumentError(f"{where}: dims {dims} must be distinct axes of {x}, leaving at least one")
        return tuple(v for i, v in enumerate(x) if i not in dims)

    @staticmethod
    def _attr(
        node: pb.Node, field: str, dims: int, *, default: int | list[int] | None, where: str, minimum: int
    ) -> list[int]:
        values = [int(v) for v in getattr(node, field)]
        if not values:
            if default is None:
                raise InvalidArgumentError(f"{where} needs {field} ({dims} values)")
            return list(default) if isinstance(default, list) else [default] * dims
        if len(values) != dims:
            raise InvalidArgumentError(f"{where}: {field} has {len(values)} values, expected {dims}")
        if any(v < minimum for v in values):
            raise InvalidArgumentError(f"{where}: {field} {values} must be >= {minimum}")
        return values

    def conv_params(self, node: pb.Node) -> tuple[list[int], list[int]]:
        """``(stride, padding)`` of a conv node, one value per spatial axis (defaults filled in)."""
        dims = 1 if self.op(node) == "conv1d" else 2
        where = f"proxy node {node.name!r}"
        return (
            self._attr(node, "stride", dims, default=1, where=where, minimum=1),
            self._attr(node, "padding", dims, default=0, where=where, minimum=0),
        )

    def pool_params(self, node: pb.Node, dims: int) -> tuple[list[int], list[int], list[int]]:
        """``(kernel_size, stride, padding)`` of a pool node over ``dims`` spatial axes (defaults filled in)."""
        where = f"proxy node {node.name!r}"
        kernel = self._attr(node, "kernel_size", dims, default=None, where=where, minimum=1)
        return (
            kernel,
            self._attr(node, "stride", dims, default=kernel, where=where, minimum=1),
            self._attr(node, "padding", dims, default=0, where=where, minimum=0),
        )

    # --- validation ---------------------------------------------------------------------------------------------

    def validate(
        self, expected_input_shape: Sequence[int] | None = None, expected_num_classes: int | None = None
    ) -> None:
        """Check structure and, when given, the fit to a dataset; raise on the first problem.

        Args:
            expected_input_shape: the dataset's per-sample shape; it must map to the proxy's input (see
                :func:`sample_layout`: same shape, channel-last image, or same element count).
            expected_num_classes: the dataset's class count; must equal the proxy's.

        Raises:
            InvalidArgumentError: what is wrong and what to do.
        """
        if not self._validated:
            self._validate_structure()
            self._validated = True
        if expected_input_shape is not None:
            shape = tuple(int(v) for v in expected_input_shape)
            if sample_layout(shape, self.input_shape) is None:
                raise InvalidArgumentError(
                    f"proxy input shape {self.input_shape} does not fit the dataset's samples of shape {shape}; "
                    "export the proxy from a model built for this dataset"
                )
        if expected_num_classes is not None and int(expected_num_classes) != self.num_classes:
            raise InvalidArgumentError(
                f"proxy predicts {self.num_classes} classes but the dataset has {int(expected_num_classes)}; "
                "export the proxy from a model built for this dataset"
            )

    def validate_for(self, *, input_shape: Sequence[int] | None = None, num_classes: int | None = None) -> None:
        """Keyword form of :meth:`validate` (``input_shape`` is the dataset's sample shape)."""
        self.validate(expected_input_shape=input_shape, expected_num_classes=num_classes)

    def _validate_structure(self) -> None:
        msg = self._msg
        if msg.format_version != FORMAT_VERSION:
            raise InvalidArgumentError(
                f"proxy format version {msg.format_version} is not supported (this reader knows {FORMAT_VERSION}); "
                "export the proxy with a matching nessa version"
            )
        shape = self.input_shape
        if not shape or any(v < 1 for v in shape):
            raise InvalidArgumentError(f"proxy input shape {shape} must be non-empty with positive sizes")
        self.input_dtype  # noqa: B018 - raises on a bad dtype
        _check_normalization(tuple(msg.input.mean), tuple(msg.input.std), float(msg.input.scale), shape)
        if msg.num_classes < 1:
            raise InvalidArgumentError("proxy num_classes must be at least 1")
        self._validate_tensors(msg.tensors)
        if msg.HasField("features"):
            idx, feats = self.features()
            if feats.shape != (len(idx), *shape) or len(idx) == 0:
                raise InvalidArgumentError(
                    f"the proxy's features have shape {feats.shape} for {len(idx)} indices; expected "
                    f"({len(idx)}, *{shape}) with at least one sample"
                )
            if idx.min() < 0 or len(np.unique(idx)) != len(idx):
                raise InvalidArgumentError("the proxy's feature indices must be distinct dataset indices (>= 0)")
            if not np.all(np.isfinite(feats)):
                raise InvalidArgumentError("the proxy's features have NaN or Inf values")
        if msg.program:
            if msg.nodes or msg.tensors:
                raise InvalidArgumentError("a proxy carries either a torch.export program or a graph, not both")
            return
        names: set[str] = set()
        for n in msg.nodes:
            if not n.name or n.name == INPUT or n.name in names:
                raise InvalidArgumentError(
                    f"proxy node name {n.name!r} is empty, reserved or repeated; node names must be unique and "
                    f"not {INPUT!r}"
                )
            names.add(n.name)
            self.op(n)
        if not names:
            raise InvalidArgumentError("proxy has no nodes")
        if msg.output not in names:
            raise InvalidArgumentError(f"proxy output {msg.output!r} is not a node of the graph")
        if msg.embedding not in names and msg.embedding != INPUT:
            raise InvalidArgumentError(f"proxy embedding {msg.embedding!r} is not a node of the graph")
        shapes = self.shapes()
        if shapes[msg.output] != (self.num_classes,):
            raise InvalidArgumentError(
                f"proxy output {msg.output!r} has shape {shapes[msg.output]} but the proxy declares "
                f"{self.num_classes} classes"
            )

    def _validate_tensors(self, tensors: Iterable[pb.Tensor]) -> None:
        seen: set[str] = set()
        for t in tensors:
            if not t.name or t.name in seen:
                raise InvalidArgumentError(f"proxy tensor name {t.name!r} is empty or repeated")
            seen.add(t.name)
            if not t.shape or any(v < 1 for v in t.shape):
                raise InvalidArgumentError(f"proxy tensor {t.name!r} has shape {list(t.shape)}; sizes must be >= 1")
            values, scales = self.tensor_raw(t.name)  # checks dtype and byte length
            if scales is None:
                if len(t.scales):
                    raise InvalidArgumentError(f"proxy tensor {t.name!r} is FLOAT32 but carries scales")
                if not np.all(np.isfinite(values)):
                    raise InvalidArgumentError(
                        f"proxy tensor {t.name!r} has NaN or Inf values; the model diverged or the proxy is corrupt"
                    )
            else:
                if scales.shape != (values.shape[0],):
                    raise InvalidArgumentError(
                        f"proxy tensor {t.name!r} has {scales.size} scales for {values.shape[0]} output channels"
                    )
                if not np.all(np.isfinite(scales)) or not np.all(scales > 0):
                    raise InvalidArgumentError(
                        f"proxy tensor {t.name!r} has NaN, Inf or non-positive scales; re-export the proxy"
                    )


def _broadcast(a: Shape, b: Shape, where: str) -> Shape:
    """Numpy broadcasting of two per-sample shapes (right aligned)."""
    try:
        return tuple(int(v) for v in np.broadcast_shapes(a, b))
    except ValueError:
        raise InvalidArgumentError(f"{where}: shapes {a} and {b} do not broadcast") from None


def dumps(proxy: Proxy) -> bytes:
    """The wire form of ``proxy``: its message with a fresh checksum, serialized deterministically."""
    proxy.seal()
    return proxy.message.SerializeToString(deterministic=True)


def loads(data: bytes) -> Proxy:
    """Parse, check the checksum of, and validate a proxy's wire form.

    Raises:
        InvalidArgumentError: not a proxy, a checksum mismatch, or a structural problem (see :meth:`Proxy.validate`).
    """
    msg = pb.Proxy()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise InvalidArgumentError(
            f"bytes are not a nessa.v1.Proxy message ({exc}); send a proxy from dumps()"
        ) from exc
    proxy = Proxy(msg)
    if not msg.checksum:
        raise InvalidArgumentError("proxy carries no checksum; serialize it with nessa.proxy.dumps()")
    actual = proxy.compute_checksum()
    if actual != msg.checksum:
        raise InvalidArgumentError(
            f"proxy checksum mismatch: content hashes to {actual[:16]}… but the proxy says {msg.checksum[:16]}…; "
            "the proxy was corrupted or modified after export, send it again"
        )
    proxy.validate()
    return proxy


def op_enum(name: str) -> pb.OpType:
    """Wire enum of op ``name`` (``"conv2d"`` → ``OP_CONV2D``)."""
    return _OP_BY_NAME[name]


def dtype_enum(name: str) -> pb.DType:
    """Wire enum of a sample dtype name (``"float32"``/``"uint8"``)."""
    return _DTYPE_NAMES[name]


@dataclass(frozen=True)
class Limits:
    """Bounds a proxy's graph must keep (checked by :func:`check_bounds`).

    Attributes:
        max_dim: largest size of any one dimension (input, tensors, every node's output), stride or padding.
        max_sample_elements: largest number of elements of one node's output for one sample.
        max_nodes: most nodes in the graph.
        max_tensors: most weight tensors.
    """

    max_dim: int = 1 << 24
    max_sample_elements: int = 1 << 26
    max_nodes: int = 1024
    max_tensors: int = 2048


@dataclass(frozen=True)
class ForwardCost:
    """What one forward pass of a proxy over a batch needs (from :func:`estimate_forward`).

    Attributes:
        batch_size: samples in the batch.
        activation_bytes: the most float32 activation bytes live at one time (input included).
        weight_bytes: the weights as float32 (engines dequantize int8 weights).
        macs: multiply-adds (convs, linears) plus one operation per element of the other ops.
    """

    batch_size: int
    activation_bytes: int
    weight_bytes: int
    macs: int

    @property
    def memory_bytes(self) -> int:
        """Activations plus weights."""
        return self.activation_bytes + self.weight_bytes


def check_bounds(proxy: Proxy, limits: Limits | None = None) -> None:
    """Raise :class:`InvalidArgumentError` unless every size in the proxy's graph is within ``limits``.

    Checked before shapes are inferred (so an absurd padding never becomes an absurd shape): node and tensor
    counts, every tensor dimension, the input shape, every stride, kernel size and padding (a conv's or pool's
    padding may not exceed its kernel size); then every node's output shape.
    """
    lim = limits or Limits()
    msg = proxy.message
    if len(msg.nodes) > lim.max_nodes:
        raise InvalidArgumentError(f"proxy has {len(msg.nodes)} nodes; this daemon accepts at most {lim.max_nodes}")
    if len(msg.tensors) > lim.max_tensors:
        raise InvalidArgumentError(
            f"proxy has {len(msg.tensors)} tensors; this daemon accepts at most {lim.max_tensors}"
        )

    def dims_ok(what: str, values: Sequence[int]) -> None:
        bad = [int(v) for v in values if int(v) > lim.max_dim]
        if bad:
            raise InvalidArgumentError(
                f"{what} has a size of {bad[0]}, over this daemon's limit of {lim.max_dim} per dimension; "
                "export a smaller proxy"
            )

    dims_ok("proxy input shape", msg.input.shape)
    for t in msg.tensors:
        dims_ok(f"proxy tensor {_short(t.name)!r}", t.shape)
    weights = {t.name: tuple(int(v) for v in t.shape) for t in msg.tensors}
    for node in msg.nodes:
        where = f"proxy node {_short(node.name)!r}"
        for field in ("kernel_size", "stride", "padding"):
            dims_ok(f"{where} {field}", getattr(node, field))
        if not node.padding:
            continue
        kernel: Sequence[int] = list(node.kernel_size)
        if node.op in (pb.OP_CONV1D, pb.OP_CONV2D) and node.weight in weights:
            kernel = weights[node.weight][2:]
        if kernel and len(kernel) == len(node.padding):
            too_big = [(int(p), int(k)) for p, k in zip(node.padding, kernel, strict=True) if int(p) > int(k)]
            if too_big:
                p, k = too_big[0]
                raise InvalidArgumentError(
                    f"{where}: padding {p} is larger than its kernel size {k}; a padding beyond the kernel only adds "
                    "outputs that see nothing but zeros: export the model with padding <= kernel size"
                )
    for name, shape in proxy.shapes().items():
        dims_ok(f"the output of proxy node {_short(name)!r}", shape)
        if math.prod(shape) > lim.max_sample_elements:
            raise InvalidArgumentError(
                f"the output of proxy node {_short(name)!r} has shape {shape} ({math.prod(shape)} elements per "
                f"sample), over this daemon's limit of {lim.max_sample_elements}; export a smaller proxy"
            )


def estimate_forward(proxy: Proxy, batch_size: int) -> ForwardCost:
    """Estimate the memory and compute of one forward pass of ``proxy`` over ``batch_size`` samples.

    Memory: walking the nodes in topological order, the largest sum of the float32 activations alive at once (a
    node's output lives until its last reader has run; the input, the logits and the embedding until the end), plus
    every weight as float32. Compute: a conv's ``out_elements * in_channels * kernel_elements`` multiply-adds, a
    linear's ``out * in``, a pool's ``out_elements * kernel_elements``, one per element for the other ops.
    """
    n = int(batch_size)
    if proxy.program:
        # A torch.export program: its activations are unknown here; count the input and the program's bytes.
        return ForwardCost(
            batch_size=n,
            activation_bytes=4 * n * math.prod(proxy.input_shape),
            weight_bytes=len(proxy.program),
            macs=0,
        )
    shapes = proxy.shapes()
    order = proxy.order()
    last_use: dict[str, int] = {}
    for i, node in enumerate(order):
        for src in node.inputs:
            last_use[src] = i
    keep = {INPUT, proxy.output, proxy.embedding}
    weights = {t.name: tuple(int(v) for v in t.shape) for t in proxy.message.tensors}
    live = {INPUT: math.prod(shapes[INPUT])}
    peak = sum(live.values())
    macs = 0
    for i, node in enumerate(order):
        out = math.prod(shapes[node.name])
        live[node.name] = out
        op = OPS.get(node.op, "")
        if op in ("conv1d", "conv2d"):
            w = weights.get(node.weight, (1, 1))
            macs += out * math.prod(w[1:])
        elif op == "linear":
            w = weights.get(node.weight, (1, 1))
            macs += out * (w[1] if len(w) > 1 else 1)
        elif op in _POOLS:
            macs += out * max(1, math.prod(int(k) for k in node.kernel_size))
        elif op == "matmul":
            macs += out * shapes[node.inputs[0]][-1]
        elif op == "attention":
            q, k = shapes[node.inputs[0]], shapes[node.inputs[1]]
            macs += math.prod(q[:-1]) * k[-2] * (q[-1] + shapes[node.name][-1])
            live[node.name + "/scores"] = math.prod(q[:-1]) * k[-2]
        else:
            macs += math.prod(shapes[node.inputs[0]]) if node.inputs else out
        peak = max(peak, sum(live.values()))
        live.pop(node.name + "/scores", None)
        for src in set(node.inputs):
            if last_use.get(src) == i and src not in keep:
                live.pop(src, None)
    weight_bytes = sum(4 * math.prod(s) for s in weights.values())
    return ForwardCost(batch_size=n, activation_bytes=4 * n * peak, weight_bytes=weight_bytes, macs=n * macs)


def check_input_dtype(proxy: Proxy, dataset_dtype: str | np.dtype | None, dataset: str = "the dataset") -> None:
    """Raise :class:`InvalidArgumentError` unless the proxy takes samples of the dataset's dtype.

    A ``uint8`` proxy (it scales raw bytes) needs ``uint8`` samples; a ``float32`` proxy needs floating-point
    samples (converted to float32). ``dataset_dtype`` ``None`` or ``""``: the dataset stores encoded bytes, which
    no proxy reads.
    """
    if dataset_dtype in IMAGE_CODECS:
        if proxy.input_dtype != np.uint8:
            raise InvalidArgumentError(
                f"{dataset} stores {dataset_dtype} images, which decode to uint8 pixels; export the proxy with "
                "Normalization(dtype='uint8', scale=1/255, ...)"
            )
        return
    if dataset_dtype is None or (isinstance(dataset_dtype, str) and not dataset_dtype):
        raise InvalidArgumentError(
            f"{dataset} stores encoded bytes, not arrays: the daemon cannot run a proxy over it; ingest the samples "
            "as raw arrays to select with a proxy"
        )
    have = np.dtype(dataset_dtype)
    want = proxy.input_dtype
    ok = have == np.uint8 if want == np.uint8 else have.kind == "f"
    if not ok:
        raise InvalidArgumentError(
            f"the proxy takes {want} samples but {dataset} stores {have}; export the proxy with normalization dtype "
            f"{'uint8' if have == np.uint8 else 'float32'!r} (the dataset's samples as they are stored)"
        )


def _short(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters (names in messages stay short whatever a proxy holds)."""
    return text if len(text) <= limit else text[:limit] + "…"
