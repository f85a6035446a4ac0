"""Export a torch module to a :class:`~nessa.proxy.format.Proxy` (torch.fx tracing, BatchNorm folding, int8).

The module is traced with :func:`torch.fx.symbolic_trace` and its shapes propagated with the example input. Each
graph node maps onto the proxy vocabulary (``proto/nessa/v1/proxy.proto``):

==========================  =====================================================================================
proxy op                    torch forms accepted
==========================  =====================================================================================
``conv1d`` / ``conv2d``     ``nn.Conv1d`` / ``nn.Conv2d`` (groups=1, dilation=1, zero padding; ``"same"`` only when
                            symmetric)
``linear``                  ``nn.Linear`` on any leading axes
activations                 ``nn.ReLU``/``GELU`` (exact)/``SiLU``/``Sigmoid``/``Tanh`` and their functional and
                            method forms
``softmax``                 ``nn.Softmax``, ``F.softmax``, ``x.softmax`` over the last axis
``layernorm``/``groupnorm`` ``nn.LayerNorm`` (last axis), ``F.layer_norm``, ``nn.GroupNorm``
``matmul``/``attention``    ``@``, ``torch.matmul``, ``torch.bmm``; ``F.scaled_dot_product_attention`` (no mask)
``add``/``mul``/``scale``   ``a + b``, ``a * b`` (broadcast), ``a - b``, ``-x``, and with a number (``x / 8``)
layout ops                  ``reshape``/``view``/``flatten``/``unflatten``/``squeeze``/``unsqueeze``, ``permute``/
                            ``transpose``, ``torch.cat``, ``x[:, i]`` / ``x[:, a:b]``, ``qkv.permute(2, 0, ...)[i]``
``constant``                parameters read in ``forward`` (position embeddings, ``cls.expand(B, -1, -1)``)
``embedding``               ``nn.Embedding`` (no ``max_norm``) on stored ids; ``nn.EmbeddingBag`` (mean/sum of
                            fixed-length bags)
pools                       ``nn.MaxPool{1,2}d``, ``nn.AvgPool{1,2}d`` and functional forms (no dilation or ceil
                            mode), adaptive pooling to a size dividing the input, ``mean`` over any axes
(folded)                    ``nn.BatchNorm{1,2}d`` right after a conv/linear whose output nothing else reads;
                            elsewhere a per-channel ``mul`` and ``add`` of constants
(dropped)                   ``nn.Identity``, ``nn.Dropout`` (inference), ``contiguous``, ``float``
(input shape)               a reshape/view/unsqueeze of the model input itself becomes the proxy's input shape
==========================  =====================================================================================

An op outside the vocabulary (``UnsupportedOpError``, naming the op and the module path, e.g. ``unsupported op
'ELU' at module 'blocks.2.act'; supported: ...``) makes :func:`export` carry the model as a ``torch.export``
program instead (:mod:`nessa.proxy.torch_program`; only the torch engine runs it), unless ``fallback=False``.
``head_only=True`` exports just the last linear layer (:func:`export_head`, fed by :func:`head_features`).

After folding, each conv/linear weight is quantized per output channel to symmetric int8
(:mod:`nessa.proxy.quantize`); biases stay float32. ``quantize=None`` keeps float32 weights (exact up to float32
rounding of the fold). The embedding is the input of the last linear layer.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from nessa.errors import InvalidArgumentError
from nessa.proxy.format import FORMAT_VERSION, INPUT, Normalization, Proxy, dtype_enum, op_enum, sample_layout
from nessa.proxy.quantize import quantize_per_channel
from nessa.store.images import ImagePrep
from nessa.v1 import proxy_pb2 as pb

__all__ = ["SUPPORTED", "UnsupportedOpError", "export", "export_head", "head_features", "with_features"]

#: What export accepts, for error messages.
SUPPORTED = (
    "Conv1d, Conv2d, Linear, ReLU, GELU, SiLU, Sigmoid, Tanh, Softmax (last axis), LayerNorm (last axis), GroupNorm, "
    "Embedding, add/mul (broadcast, or with a number), matmul/bmm/@, scaled_dot_product_attention, "
    "MaxPool1d/2d, AvgPool1d/2d, adaptive pooling to a size dividing the input, mean, "
    "Flatten/Unflatten/view/reshape/squeeze/unsqueeze, permute/transpose, cat, x[:, i] / slicing, parameters "
    "(position embeddings, class tokens), BatchNorm1d/2d (folded after a conv/linear), Identity, Dropout"
)

Shape = tuple[int, ...]


@dataclass
class _Val:
    """A traced tensor value: which proxy node holds it and its per-sample shape."""

    ref: str
    shape: Shape
    fx_node: fx.Node
    # The proxy value has fewer axes than torch's (a keepdim global pool: (C,) for torch's (C, 1, 1)).
    squeezed: bool = False
    # Nothing but the chain that ends in this value reads the producing node (BatchNorm may fold into it).
    sole: bool = True
    # A model parameter or buffer read directly (get_attr): its value, before any constant node is emitted.
    const: np.ndarray | None = None
    # A permutation that moved the batch axis (``qkv.permute(2, 0, 3, 1, 4)``), pending until an index on its first
    # axis (``qkv[0]``) brings the batch axis back first; ``ref`` and ``shape`` are the unpermuted source's.
    perm: tuple[int, ...] | None = None


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]
    out_shape: Shape
    source: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel_size: list[int] = field(default_factory=list)
    stride: list[int] = field(default_factory=list)
    padding: list[int] = field(default_factory=list)
    dims: list[int] = field(default_factory=list)
    alpha: float = 0.0
    beta: float = 0.0
    eps: float = 0.0
    groups: int = 0


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack.keys())[-1])
    return "<root>"


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", node.target))
    if node.op == "get_attr":
        return f"parameter access {node.target}"
    return str(node.target)


class UnsupportedOpError(InvalidArgumentError):
    """An op outside the proxy vocabulary (``op`` at module ``path``); export may fall back to torch.export."""

    def __init__(self, message: str, op: str, path: str) -> None:
        super().__init__(message)
        self.op = op
        self.path = path


def _unsupported(node: fx.Node, gm: fx.GraphModule, why: str = "") -> UnsupportedOpError:
    extra = f" ({why})" if why else ""
    op, path = _op_name(node, gm), _module_path(node)
    return UnsupportedOpError(f"unsupported op {op!r} at module {path!r}{extra}; supported: {SUPPORTED}", op, path)


def _tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return None if shape is None else tuple(int(v) for v in shape)


def _tensor_users(node: fx.Node) -> int:
    """How many graph nodes read ``node`` as a tensor (``x.size(0)`` and similar shape reads do not count)."""
    return sum(1 for u in node.users if _tensor_shape(u) is not None)


_SHAPE_METHODS = {"size", "dim"}
_SHAPE_FUNCS: set[Callable[..., Any]] = {getattr, operator.getitem, operator.mul, operator.add, operator.floordiv}


def _is_shape_arithmetic(node: fx.Node) -> bool:
    """A call computing a size (``x.size(0)``, ``x.shape[1] * 2``) rather than a tensor."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    if node.op != "call_function" or node.target not in _SHAPE_FUNCS:
        return False
    if node.target is getattr:
        return len(node.args) > 1 and node.args[1] == "shape"
    # getitem / arithmetic on sizes only: every graph operand is itself shape arithmetic.
    return all(_tensor_shape(a) is None for a in node.all_input_nodes) and all(
        _is_shape_arithmetic(a) for a in node.all_input_nodes
    )


def _tuple(value: Any, dims: int) -> list[int]:
    if isinstance(value, int):
        return [value] * dims
    values = [int(v) for v in value]
    return values * dims if len(values) == 1 else values


_RELU_FUNCS: set[Callable[..., Any]] = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCS: set[Callable[..., Any]] = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS: set[Callable[..., Any]] = {torch.flatten}
_RESHAPE_FUNCS: set[Callable[..., Any]] = {torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten}
_MAXPOOL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2}
_AVGPOOL_FUNCS = {F.avg_pool1d: 1, F.avg_pool2d: 2}
_ADAPTIVE_FUNCS: set[Callable[..., Any]] = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
}
_UNARY_FUNCS: dict[Any, str] = {
    F.silu: "silu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
}
_UNARY_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}
_SOFTMAX_FUNCS: set[Callable[..., Any]] = {F.softmax, torch.softmax}
_MATMUL_FUNCS: set[Callable[..., Any]] = {torch.matmul, torch.bmm, operator.matmul}
_MUL_FUNCS: set[Callable[..., Any]] = {operator.mul, operator.imul, torch.mul}
_DIV_FUNCS: set[Callable[..., Any]] = {operator.truediv, torch.div}
_SUB_FUNCS: set[Callable[..., Any]] = {operator.sub, operator.isub, torch.sub}
_CAT_FUNCS: set[Callable[..., Any]] = {torch.cat, torch.concat}
_PERMUTE_FUNCS: set[Callable[..., Any]] = {torch.permute}
_TRANSPOSE_FUNCS: set[Callable[..., Any]] = {torch.transpose}
_ALIAS_FUNCS: set[Callable[..., Any]] = {F.dropout}
_MEAN_FUNCS: set[Callable[..., Any]] = {torch.mean}


class _Exporter:
    def __init__(self, module: nn.Module, example: torch.Tensor) -> None:
        self.module = module
        try:
            self.gm = fx.symbolic_trace(module)
        except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
            raise UnsupportedOpError(
                f"cannot trace {type(module).__name__} with torch.fx ({type(exc).__name__}: {exc}); graph proxies "
                "need a forward without data-dependent control flow",
                f"torch.fx trace ({type(exc).__name__})",
                "<root>",
            ) from exc
        with torch.no_grad():
            try:
                ShapeProp(self.gm).propagate(example)
            except Exception as exc:
                raise InvalidArgumentError(
                    f"running {type(module).__name__} on the example input of shape {tuple(example.shape)} failed "
                    f"({type(exc).__name__}: {exc}); pass an input the model accepts"
                ) from exc
        self.batch = int(example.shape[0])
        self.input_shape: Shape = tuple(int(v) for v in example.shape[1:])
        self.values: dict[fx.Node, _Val | None] = {}
        self.nodes: dict[str, _Node] = {}
        self.input_used = False
        self.output: _Val | None = None

    # --- helpers ------------------------------------------------------------------------------------------------

    def val(self, arg: Any, node: fx.Node) -> _Val:
        if not isinstance(arg, fx.Node):
            raise _unsupported(node, self.gm, f"operand {arg!r} is not a tensor of the graph")
        v = self.values.get(arg)
        if v is None:
            raise _unsupported(node, self.gm, "an operand is not a tensor the proxy can hold")
        return v

    def use(self, v: _Val, node: fx.Node) -> str:
        if v.perm is not None:
            raise _unsupported(node, self.gm, "it reads a permutation that moves the batch axis (index it first)")
        if v.const is not None:
            return self.constant_ref(v)
        if v.squeezed:
            # A keepdim global pool read by something other than a flatten: give it back its (C, 1, ...) shape.
            full = self.fx_shape(v.fx_node)
            name = f"{v.ref}_keepdim"
            if name not in self.nodes:
                self.nodes[name] = _Node(
                    name=name,
                    op="reshape",
                    inputs=[v.ref],
                    out_shape=full,
                    source=_module_path(v.fx_node),
                    dims=list(full),
                )
            return name
        if v.ref == INPUT:
            self.input_used = True
        return v.ref

    def constant_ref(self, v: _Val) -> str:
        """The constant node holding ``v``'s parameter (emitted on first use)."""
        assert v.const is not None
        name = v.ref
        if name not in self.nodes:
            self.nodes[name] = _Node(
                name=name,
                op="constant",
                inputs=[],
                out_shape=v.shape,
                source=_module_path(v.fx_node),
                weight=v.const.astype(np.float64),
            )
        return name

    def const_val(self, node: fx.Node, name: str, value: np.ndarray) -> _Val:
        """A new per-sample constant (e.g. a standalone BatchNorm's scale) as a value."""
        return _Val(name, tuple(int(v) for v in value.shape), node, const=np.asarray(value, np.float64))

    def param(self, node: fx.Node) -> _Val:
        """A parameter or buffer read in ``forward`` (a position embedding, a class token): a per-sample constant."""
        obj: Any = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, torch.Tensor) or not obj.is_floating_point() or obj.dim() == 0:
            raise _unsupported(node, self.gm, "a non-float or scalar attribute")
        arr = obj.detach().double().numpy()
        if arr.ndim >= 2 and arr.shape[0] == 1:
            arr = arr[0]
        return _Val(node.name, tuple(int(v) for v in arr.shape), node, const=arr)

    def full_shape(self, arg: Any) -> Shape:
        """Torch's shape of a graph value (batch axis included for activations)."""
        shape = _tensor_shape(arg) if isinstance(arg, fx.Node) else None
        if shape is None:
            raise InvalidArgumentError(f"no shape recorded for {arg!r}")
        return shape

    def axis(self, node: fx.Node, arg: Any, d: int) -> int:
        """Per-sample axis of torch axis ``d`` of ``arg`` (which has a batch axis first)."""
        rank = len(self.full_shape(arg))
        a = int(d) % rank - 1
        if a < 0:
            raise _unsupported(node, self.gm, "it acts on the batch axis")
        return a

    def simple(self, node: fx.Node, op: str, ins: list[_Val], **kw: Any) -> _Val:
        """Emit ``op`` with torch's output shape."""
        return self.emit(node, op, ins, self.fx_shape(node), **kw)

    def emit(self, node: fx.Node, op: str, inputs: list[_Val], out_shape: Shape, **kw: Any) -> _Val:
        refs = [self.use(v, node) for v in inputs]
        self.nodes[node.name] = _Node(
            name=node.name, op=op, inputs=refs, out_shape=out_shape, source=_module_path(node), **kw
        )
        return _Val(node.name, out_shape, node)

    def emit_raw(self, node: fx.Node, op: str, refs: list[str], out_shape: Shape, **kw: Any) -> _Val:
        self.nodes[node.name] = _Node(
            name=node.name, op=op, inputs=refs, out_shape=out_shape, source=_module_path(node), **kw
        )
        return _Val(node.name, out_shape, node)

    def alias(self, v: _Val, node: fx.Node, shape: Shape | None = None, squeezed: bool | None = None) -> _Val:
        src = v.fx_node
        return _Val(
            v.ref,
            v.shape if shape is None else shape,
            node,
            v.squeezed if squeezed is None else squeezed,
            sole=v.sole and _tensor_users(src) == 1,
            const=v.const,
        )

    def fx_shape(self, node: fx.Node) -> Shape:
        shape = _tensor_shape(node)
        if shape is None:
            raise _unsupported(node, self.gm, "its result is not a tensor")
        if not shape or shape[0] != self.batch:
            raise _unsupported(node, self.gm, f"its result of shape {shape} does not keep the batch axis first")
        return shape[1:]

    # --- the walk -----------------------------------------------------------------------------------------------

    def run(self) -> None:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise InvalidArgumentError(
                f"{type(self.module).__name__}.forward takes {len(placeholders)} inputs; a proxy takes exactly one"
            )
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = _Val(INPUT, self.input_shape, node)
            elif node.op == "output":
                arg = node.args[0]
                if not isinstance(arg, fx.Node):
                    raise InvalidArgumentError(
                        "the model returns a tuple or constant; a proxy's model must return one logits tensor"
                    )
                self.output = self.val(arg, node)
            elif node.op == "get_attr":
                self.values[node] = self.param(node)
            elif node.op == "call_module":
                self.values[node] = self.module_node(node, self.gm.get_submodule(str(node.target)))
            elif _tensor_shape(node) is None and _is_shape_arithmetic(node):
                # x.size(0), x.shape[1], ... feeding a reshape: not part of the proxy.
                self.values[node] = None
            elif node.op in ("call_function", "call_method"):
                self.values[node] = self.function_node(node)
            else:
                raise _unsupported(node, self.gm)

    def module_node(self, node: fx.Node, mod: nn.Module) -> _Val:
        x = self.val(node.args[0], node) if node.args else None
        if x is None:
            raise _unsupported(node, self.gm, "no input")
        if isinstance(mod, nn.Identity | nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.AlphaDropout):
            return self.alias(x, node)
        if isinstance(mod, nn.Conv1d | nn.Conv2d):
            return self.conv(node, mod, x)
        if isinstance(mod, nn.Linear):
            w = mod.weight.detach().double().numpy()
            b = None if mod.bias is None else mod.bias.detach().double().numpy()
            shape = (int(mod.out_features),) if x.squeezed else self.fx_shape(node)
            return self.emit(node, "linear", [x], shape, weight=w, bias=b)
        extended = self.module_extended(node, mod, x)
        if extended is not None:
            return extended
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            return self.fold_bn(node, mod, x)
        if isinstance(mod, nn.ReLU):
            return self.emit(node, "relu", [x], x.shape)
        if isinstance(mod, nn.MaxPool1d | nn.MaxPool2d):
            dims = 1 if isinstance(mod, nn.MaxPool1d) else 2
            if mod.return_indices:
                raise _unsupported(node, self.gm, "return_indices=True")
            return self.pool(
                node, "maxpool", x, dims, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode
            )
        if isinstance(mod, nn.AvgPool1d | nn.AvgPool2d):
            dims = 1 if isinstance(mod, nn.AvgPool1d) else 2
            if getattr(mod, "divisor_override", None):
                raise _unsupported(node, self.gm, "divisor_override")
            if not mod.count_include_pad and any(_tuple(mod.padding, dims)):
                raise _unsupported(node, self.gm, "count_include_pad=False with padding")
            return self.pool(node, "avgpool", x, dims, mod.kernel_size, mod.stride, mod.padding, 1, mod.ceil_mode)
        if isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d):
            dims = 1 if isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveMaxPool1d) else 2
            kind = "avgpool" if isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d) else "maxpool"
            if getattr(mod, "return_indices", False):
                raise _unsupported(node, self.gm, "return_indices=True")
            return self.adaptive_pool(node, x, kind, dims, mod.output_size)
        if isinstance(mod, nn.Flatten):
            if mod.start_dim == 1 and mod.end_dim == -1:
                return self.flatten(node, x)
            return self.reshape(node, x)
        if isinstance(mod, nn.Unflatten):
            return self.reshape(node, x)
        raise _unsupported(node, self.gm)

    def module_extended(self, node: fx.Node, mod: nn.Module, x: _Val) -> _Val | None:
        """Activations, norms and embeddings given as modules; ``None`` for other modules."""
        if isinstance(mod, nn.GELU):
            if mod.approximate != "none":
                raise _unsupported(node, self.gm, f"approximate={mod.approximate!r}; only the exact form is")
            return self.simple(node, "gelu", [x])
        for cls, op in ((nn.SiLU, "silu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh")):
            if isinstance(mod, cls):
                return self.simple(node, op, [x])
        if isinstance(mod, nn.Softmax):
            return self.softmax(node, x, node.args[0], mod.dim)
        if isinstance(mod, nn.LayerNorm):
            w = None if mod.weight is None else mod.weight.detach().double().numpy()
            b = None if mod.bias is None else mod.bias.detach().double().numpy()
            return self.layernorm(node, x, tuple(mod.normalized_shape), w, b, float(mod.eps))
        if isinstance(mod, nn.GroupNorm):
            c = int(mod.num_channels)
            w = mod.weight.detach().double().numpy() if mod.weight is not None else np.ones(c)
            b = mod.bias.detach().double().numpy() if mod.bias is not None else None
            return self.simple(node, "groupnorm", [x], weight=w, bias=b, eps=float(mod.eps), groups=int(mod.num_groups))
        if isinstance(mod, nn.EmbeddingBag):
            return self.embedding_bag(node, mod, x)
        if isinstance(mod, nn.Embedding):
            if mod.max_norm is not None:
                raise _unsupported(node, self.gm, "max_norm (it changes the weights in forward)")
            return self.simple(node, "embedding", [x], weight=mod.weight.detach().double().numpy())
        return None

    def function_node(self, node: fx.Node) -> _Val:
        t = node.target
        method = node.op == "call_method"
        args, kwargs = list(node.args), dict(node.kwargs)
        if (method and t in ("relu", "relu_")) or (not method and t in _RELU_FUNCS):
            return self.emit(node, "relu", [self.val(args[0], node)], self.val(args[0], node).shape)
        if (method and t in ("add", "add_", "__add__", "__iadd__")) or (not method and t in _ADD_FUNCS):
            if kwargs.get("alpha", 1) != 1 or len(args) > 2:
                raise _unsupported(node, self.gm, "add with alpha")
            return self.arith(node, "add", args[0], args[1] if len(args) > 1 else kwargs.get("other"))
        if method and t == "contiguous":
            return self.alias(self.val(args[0], node), node)
        if (method and t == "flatten") or (not method and t in _FLATTEN_FUNCS):
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            if start == 1 and end == -1:
                return self.flatten(node, self.val(args[0], node))
            return self.reshape(node, self.val(args[0], node))
        if (method and t in ("view", "reshape", "unsqueeze", "squeeze", "unflatten")) or (
            not method and t in _RESHAPE_FUNCS
        ):
            return self.reshape(node, self.val(args[0], node))
        if not method and t in _MAXPOOL_FUNCS:
            dims = _MAXPOOL_FUNCS[t]
            p = _bind(node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"])
            if p.get("return_indices"):
                raise _unsupported(node, self.gm, "return_indices=True")
            return self.pool(
                node,
                "maxpool",
                self.val(p["input"], node),
                dims,
                p["kernel_size"],
                p.get("stride"),
                p.get("padding", 0),
                p.get("dilation", 1),
                p.get("ceil_mode", False),
            )
        if not method and t in _AVGPOOL_FUNCS:
            dims = _AVGPOOL_FUNCS[t]
            p = _bind(
                node,
                ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
            )
            if p.get("divisor_override"):
                raise _unsupported(node, self.gm, "divisor_override")
            if not p.get("count_include_pad", True) and any(_tuple(p.get("padding", 0), dims)):
                raise _unsupported(node, self.gm, "count_include_pad=False with padding")
            return self.pool(
                node,
                "avgpool",
                self.val(p["input"], node),
                dims,
                p["kernel_size"],
                p.get("stride"),
                p.get("padding", 0),
                1,
                p.get("ceil_mode", False),
            )
        if not method and t in _ADAPTIVE_FUNCS:
            p = _bind(node, ["input", "output_size"])
            x = self.val(p["input"], node)
            kind = "avgpool" if t in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d) else "maxpool"
            return self.adaptive_pool(node, x, kind, len(x.shape) - 1, p["output_size"])
        if (method and t == "mean") or (not method and t in _MEAN_FUNCS):
            p = _bind(node, ["input", "dim", "keepdim"])
            x = self.val(p["input"], node)
            rank = len(x.shape) + 1
            dim = p.get("dim")
            axes = {int(d) % rank for d in ([dim] if isinstance(dim, int) else (dim or ()))}
            if not axes:
                raise _unsupported(node, self.gm, "mean over every axis (the batch axis too)")
            if len(x.shape) >= 2 and axes == set(range(2, rank)):
                return self.global_pool(node, x, keepdim=bool(p.get("keepdim", False)))
            return self.mean(node, x, p["input"], sorted(axes), bool(p.get("keepdim", False)))
        out = self.function_extended(node, t, method, args, kwargs)
        if out is not None:
            return out
        raise _unsupported(node, self.gm)

    def function_extended(
        self, node: fx.Node, t: Any, method: bool, args: list[Any], kwargs: dict[str, Any]
    ) -> _Val | None:
        """Calls beyond the first vocabulary (activations, attention, layout, arithmetic); ``None`` if unknown."""
        if not method and t is F.gelu:
            if kwargs.get("approximate", args[1] if len(args) > 1 else "none") != "none":
                raise _unsupported(node, self.gm, "approximate='tanh'; only the exact form is")
            return self.simple(node, "gelu", [self.val(args[0], node)])
        if method and t == "silu":
            return self.simple(node, "silu", [self.val(args[0], node)])
        if (not method and t in _UNARY_FUNCS) or (method and t in _UNARY_METHODS):
            op = _UNARY_FUNCS[t] if not method else _UNARY_METHODS[t]
            return self.simple(node, op, [self.val(args[0], node)])
        if (not method and t in _SOFTMAX_FUNCS) or (method and t == "softmax"):
            p = _bind(node, ["input", "dim"])
            return self.softmax(node, self.val(p["input"], node), p["input"], p.get("dim"))
        if not method and t is F.layer_norm:
            p = _bind(node, ["input", "normalized_shape", "weight", "bias", "eps"])
            lw, lb = (self.const_array(p.get(k), node) for k in ("weight", "bias"))
            shape = (
                tuple(p["normalized_shape"]) if not isinstance(p["normalized_shape"], int) else (p["normalized_shape"],)
            )
            return self.layernorm(node, self.val(p["input"], node), shape, lw, lb, float(p.get("eps", 1e-5)))
        if (not method and t in _MATMUL_FUNCS) or (method and t in ("matmul", "bmm", "__matmul__")):
            a, b = self.val(args[0], node), self.val(args[1], node)
            if a.const is not None or b.const is not None:
                raise _unsupported(node, self.gm, "a product with a parameter; use nn.Linear")
            if len(a.shape) != len(b.shape) or len(a.shape) < 2:
                raise _unsupported(node, self.gm, f"matmul of shapes {a.shape} and {b.shape} (ranks must match)")
            return self.simple(node, "matmul", [a, b])
        if not method and t is F.scaled_dot_product_attention:
            p = _bind(node, ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"])
            if p.get("attn_mask") is not None or p.get("is_causal") or p.get("enable_gqa"):
                raise _unsupported(node, self.gm, "an attention mask, is_causal or enable_gqa")
            q, k, v = (self.val(p[n], node) for n in ("query", "key", "value"))
            scale = p.get("scale")
            return self.simple(node, "attention", [q, k, v], alpha=float(scale) if scale else 0.0)
        if (not method and t in _MUL_FUNCS) or (method and t in ("mul", "mul_", "__mul__")):
            return self.arith(node, "mul", args[0], args[1])
        if (not method and t in _DIV_FUNCS) or (method and t in ("div", "__truediv__")):
            if len(args) > 2 or kwargs.get("rounding_mode") is not None or not _number(args[1]):
                raise _unsupported(node, self.gm, "division by a tensor or with a rounding mode")
            return self.simple(node, "scale", [self.val(args[0], node)], alpha=1.0 / float(args[1]))
        if (not method and t in _SUB_FUNCS) or (method and t in ("sub", "__sub__")):
            if _number(args[1]):
                return self.simple(node, "scale", [self.val(args[0], node)], alpha=1.0, beta=-float(args[1]))
            b = self.val(args[1], node)
            neg = _Node(
                name=f"{node.name}_neg",
                op="scale",
                inputs=[self.use(b, node)],
                out_shape=b.shape,
                source=_module_path(node),
                alpha=-1.0,
            )
            self.nodes[neg.name] = neg
            return self.emit_raw(node, "add", [self.use(self.val(args[0], node), node), neg.name], self.fx_shape(node))
        if (not method and t is operator.neg) or (method and t == "neg"):
            return self.simple(node, "scale", [self.val(args[0], node)], alpha=-1.0)
        if (not method and t in _PERMUTE_FUNCS) or (method and t == "permute"):
            order = args[1] if len(args) == 2 and not isinstance(args[1], int) else args[1:]
            if not method and "dims" in kwargs:
                order = kwargs["dims"]
            return self.permute(node, args[0], [int(d) for d in order])
        if (not method and t in _TRANSPOSE_FUNCS) or (method and t == "transpose"):
            rank = len(self.full_shape(args[0]))
            d0, d1 = int(args[1]) % rank, int(args[2]) % rank
            order = list(range(rank))
            order[d0], order[d1] = order[d1], order[d0]
            return self.permute(node, args[0], order)
        if not method and t in _CAT_FUNCS:
            p = _bind(node, ["tensors", "dim"])
            parts = [self.val(a, node) for a in p["tensors"]]
            if len(parts) == 1:
                return self.alias(parts[0], node)
            rank = len(self.fx_shape(node)) + 1
            axis = int(p.get("dim", 0)) % rank - 1
            if axis < 0:
                raise _unsupported(node, self.gm, "concatenation along the batch axis")
            return self.simple(node, "concat", parts, dims=[axis])
        if not method and t is operator.getitem and isinstance(args[0], fx.Node):
            return self.getitem(node, args[0], args[1])
        if method and t == "expand":
            x = self.val(args[0], node)
            if x.const is None:
                raise _unsupported(node, self.gm, "expand of an activation")
            return self.alias(x, node)
        if (method and t in ("float", "clone")) or (not method and t in _ALIAS_FUNCS):
            if not method and kwargs.get("training", args[2] if len(args) > 2 else False):
                raise _unsupported(node, self.gm, "dropout with training=True")
            return self.alias(self.val(args[0], node), node)
        return None

    def embedding_bag(self, node: fx.Node, mod: nn.EmbeddingBag, x: _Val) -> _Val:
        """``nn.EmbeddingBag`` (mean or sum) of fixed-length bags ``(N, T)``: embedding rows, then mean (x T)."""
        if mod.mode not in ("mean", "sum") or mod.max_norm is not None or len(node.args) > 1 or node.kwargs:
            raise _unsupported(node, self.gm, "only mode mean/sum over (N, T) bags without offsets or weights")
        if len(x.shape) != 1:
            raise _unsupported(node, self.gm, f"bags of shape {x.shape}; only (N, T) is")
        if mod.padding_idx is not None:
            raise _unsupported(node, self.gm, "padding_idx (padded entries are left out of the bag)")
        rows = _Node(
            name=f"{node.name}_rows", op="embedding", inputs=[self.use(x, node)],
            out_shape=(x.shape[0], mod.embedding_dim), source=_module_path(node),
            weight=mod.weight.detach().double().numpy(),
        )  # fmt: skip
        self.nodes[rows.name] = rows
        out = (int(mod.embedding_dim),)
        if mod.mode == "mean":
            return self.emit_raw(node, "mean", [rows.name], out, dims=[0])
        mean = _Node(name=f"{node.name}_mean", op="mean", inputs=[rows.name], out_shape=out,
                     source=_module_path(node), dims=[0])  # fmt: skip
        self.nodes[mean.name] = mean
        return self.emit_raw(node, "scale", [mean.name], out, alpha=float(x.shape[0]))

    def const_array(self, arg: Any, node: fx.Node) -> np.ndarray | None:
        if arg is None:
            return None
        v = self.val(arg, node)
        if v.const is None:
            raise _unsupported(node, self.gm, "a weight computed in forward")
        return np.asarray(v.const, np.float64).reshape(-1)

    def arith(self, node: fx.Node, op: str, a_arg: Any, b_arg: Any) -> _Val:
        """``a + b`` / ``a * b``: broadcast tensors, or a number (a scale node)."""
        if _number(b_arg) or _number(a_arg):
            tensor, number = (a_arg, float(b_arg)) if _number(b_arg) else (b_arg, float(a_arg))
            x = self.val(tensor, node)
            kw = {"alpha": 1.0, "beta": number} if op == "add" else {"alpha": number}
            return self.simple(node, "scale", [x], **kw)
        a, b = self.val(a_arg, node), self.val(b_arg, node)
        if a.const is not None and b.const is not None:
            raise _unsupported(node, self.gm, "arithmetic on two parameters")
        return self.simple(node, op, [a, b])

    def softmax(self, node: fx.Node, x: _Val, arg: Any, dim: Any) -> _Val:
        rank = len(self.full_shape(arg))
        if dim is None or int(dim) % rank != rank - 1:
            raise _unsupported(node, self.gm, f"softmax over dim={dim}; only the last axis is")
        return self.simple(node, "softmax", [x])

    def layernorm(
        self, node: fx.Node, x: _Val, shape: tuple[int, ...], w: np.ndarray | None, b: np.ndarray | None, eps: float
    ) -> _Val:
        out = self.fx_shape(node)
        if len(shape) != 1 or shape[0] != out[-1]:
            raise _unsupported(node, self.gm, f"normalized_shape={shape}; only the last axis is")
        weight = w if w is not None else np.ones(shape[0])
        return self.emit(node, "layernorm", [x], out, weight=weight, bias=b, eps=eps)

    def adaptive_pool(self, node: fx.Node, x: _Val, kind: str, dims: int, output_size: Any) -> _Val:
        sizes = _tuple(output_size, dims)
        spatial = x.shape[1:]
        if len(spatial) != dims:
            raise _unsupported(node, self.gm, f"{dims}-D adaptive pooling of shape {x.shape}")
        sizes = [spatial[i] if sizes[i] is None else int(sizes[i]) for i in range(dims)]
        if kind == "avgpool" and all(v == 1 for v in sizes):
            return self.global_pool(node, x, keepdim=True)
        if any(spatial[i] % sizes[i] for i in range(dims)):
            raise _unsupported(node, self.gm, f"output_size {sizes} does not divide the input {spatial}")
        kernel = [spatial[i] // sizes[i] for i in range(dims)]
        return self.emit(node, kind, [x], self.fx_shape(node), kernel_size=kernel, stride=kernel, padding=[0] * dims)

    def mean(self, node: fx.Node, x: _Val, arg: Any, axes: list[int], keepdim: bool) -> _Val:
        per_sample = [a - 1 for a in axes]
        if min(per_sample) < 0:
            raise _unsupported(node, self.gm, "a mean over the batch axis")
        if not keepdim:
            return self.simple(node, "mean", [x], dims=per_sample)
        reduced = tuple(v for i, v in enumerate(x.shape) if i not in per_sample)
        inner = _Node(
            name=f"{node.name}_mean",
            op="mean",
            inputs=[self.use(x, node)],
            out_shape=reduced,
            source=_module_path(node),
            dims=per_sample,
        )
        self.nodes[inner.name] = inner
        out = self.fx_shape(node)
        return self.emit_raw(node, "reshape", [inner.name], out, dims=list(out))

    def permute(self, node: fx.Node, arg: Any, order: list[int]) -> _Val:
        rank = len(self.full_shape(arg))
        order = [d % rank for d in order]
        if len(order) != rank or sorted(order) != list(range(rank)):
            raise _unsupported(node, self.gm, f"permutation {order}")
        if order[0] != 0:
            src = self.val(arg, node)
            if src.perm is not None or src.const is not None:
                raise _unsupported(node, self.gm, "a permutation that moves the batch axis")
            return _Val(self.use(src, node), src.shape, node, perm=tuple(order))
        return self.simple(node, "permute", [self.val(arg, node)], dims=[d - 1 for d in order[1:]])

    def getitem(self, node: fx.Node, arg: fx.Node, index: Any) -> _Val:
        """``x[:, i]``, ``x[:, a:b]``, ``x[:, :, i]``: slices of per-sample axes (the batch axis kept whole)."""
        pending = self.values.get(arg)
        if pending is not None and pending.perm is not None:
            return self.select_permuted(node, pending, index)
        full = self.full_shape(arg)
        items = list(index) if isinstance(index, tuple) else [index]
        if not items or items[0] != slice(None) or any(i is Ellipsis or i is None for i in items):
            raise _unsupported(node, self.gm, f"indexing with {index!r}; only x[:, ...] slices of later axes are")
        x = self.val(arg, node)
        ref = self.use(x, node)
        shape = list(full[1:])
        for axis, item in enumerate(items[1:]):
            if isinstance(item, int):
                start = item % shape[axis]
                stop = start + 1
            elif isinstance(item, slice) and item.step in (None, 1):
                start, stop, _ = item.indices(shape[axis])
            else:
                raise _unsupported(node, self.gm, f"indexing with {item!r}")
            if (start, stop) == (0, shape[axis]):
                continue
            name = f"{node.name}_s{axis}"
            shape[axis] = stop - start
            self.nodes[name] = _Node(
                name=name,
                op="slice",
                inputs=[ref],
                out_shape=tuple(shape),
                source=_module_path(node),
                dims=[axis, start, stop],
            )
            ref = name
        out = self.fx_shape(node)
        if tuple(shape) == out:
            if ref == x.ref:
                return self.alias(x, node)
            return _Val(ref, out, node)
        return self.emit_raw(node, "reshape", [ref], out, dims=list(out))

    def select_permuted(self, node: fx.Node, v: _Val, index: Any) -> _Val:
        """``x.permute(p)[i]`` where ``p`` moved the batch axis and ``p[1] == 0``: slice, squeeze, permute."""
        assert v.perm is not None
        perm = list(v.perm)
        if not isinstance(index, int) or perm[1] != 0:
            raise _unsupported(node, self.gm, "a permutation that moves the batch axis, indexed other than x[i]")
        axis = perm[0] - 1  # per-sample axis of the source being selected
        i = index % v.shape[axis]
        sliced = list(v.shape)
        sliced[axis] = 1
        name = f"{node.name}_sel"
        self.nodes[name] = _Node(
            name=name,
            op="slice",
            inputs=[v.ref],
            out_shape=tuple(sliced),
            source=_module_path(node),
            dims=[axis, i, i + 1],
        )
        squeezed = tuple(s for k, s in enumerate(v.shape) if k != axis)
        self.nodes[f"{name}_sq"] = _Node(
            name=f"{name}_sq",
            op="reshape",
            inputs=[name],
            out_shape=squeezed,
            source=_module_path(node),
            dims=list(squeezed),
        )
        # Remaining full axes (source numbering without the selected one), batch first.
        rest = [d if d < perm[0] else d - 1 for d in perm[1:]]
        out = self.fx_shape(node)
        if rest == list(range(len(rest))):
            return _Val(f"{name}_sq", out, node)
        return self.emit_raw(node, "permute", [f"{name}_sq"], out, dims=[d - 1 for d in rest[1:]])

    def standalone_bn(self, node: fx.Node, mod: nn.BatchNorm1d | nn.BatchNorm2d, x: _Val) -> _Val:
        """A BatchNorm that cannot be folded: ``x * g + h`` per channel with two constant nodes."""
        c = int(mod.num_features)
        assert mod.running_mean is not None and mod.running_var is not None
        mean, var = mod.running_mean.detach().double().numpy(), mod.running_var.detach().double().numpy()
        gamma = mod.weight.detach().double().numpy() if mod.weight is not None else np.ones(c)
        beta = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(c)
        g = gamma / np.sqrt(var + float(mod.eps))
        h = beta - mean * g
        spatial = len(x.shape) - 1
        shape = (c,) + (1,) * spatial
        gs = self.const_val(node, f"{node.name}_scale", g.reshape(shape))
        hs = self.const_val(node, f"{node.name}_shift", h.reshape(shape))
        out = self.fx_shape(node)
        mul = _Node(
            name=f"{node.name}_mul",
            op="mul",
            inputs=[self.use(x, node), self.constant_ref(gs)],
            out_shape=out,
            source=_module_path(node),
        )
        self.nodes[mul.name] = mul
        return self.emit_raw(node, "add", [mul.name, self.constant_ref(hs)], out)

    # --- ops ----------------------------------------------------------------------------------------------------

    def conv(self, node: fx.Node, mod: nn.Conv1d | nn.Conv2d, x: _Val) -> _Val:
        dims = 1 if isinstance(mod, nn.Conv1d) else 2
        if mod.groups != 1:
            raise _unsupported(node, self.gm, f"groups={mod.groups}; only groups=1 is")
        if any(d != 1 for d in _tuple(mod.dilation, dims)):
            raise _unsupported(node, self.gm, f"dilation={mod.dilation}")
        if mod.padding_mode != "zeros":
            raise _unsupported(node, self.gm, f"padding_mode={mod.padding_mode!r}")
        kernel = _tuple(mod.kernel_size, dims)
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                padding = [0] * dims
            elif all(k % 2 == 1 for k in kernel):
                padding = [k // 2 for k in kernel]
            else:
                raise _unsupported(node, self.gm, "padding='same' with an even kernel (asymmetric padding)")
        else:
            padding = _tuple(mod.padding, dims)
        w = mod.weight.detach().double().numpy()
        b = None if mod.bias is None else mod.bias.detach().double().numpy()
        return self.emit(
            node,
            "conv1d" if dims == 1 else "conv2d",
            [x],
            self.fx_shape(node),
            weight=w,
            bias=b,
            stride=_tuple(mod.stride, dims),
            padding=padding,
        )

    def fold_bn(self, node: fx.Node, mod: nn.BatchNorm1d | nn.BatchNorm2d, x: _Val) -> _Val:
        if mod.running_mean is None or mod.running_var is None:
            raise _unsupported(node, self.gm, "BatchNorm without running statistics (track_running_stats=False)")
        target = self.nodes.get(x.ref)
        foldable = (
            target is not None
            and target.op in ("conv1d", "conv2d", "linear")
            and target.weight is not None
            and x.sole
            and _tensor_users(x.fx_node) == 1
            and x.shape == target.out_shape
            and not x.squeezed
            and len(x.shape) in (1, 2, 3)
            and (target.op != "linear" or len(x.shape) == 1)
            and mod.num_features == target.weight.shape[0]
        )
        self.check_bn_stats(node, mod)
        if not foldable:
            return self.standalone_bn(node, mod, x)
        assert target is not None and target.weight is not None
        channels = target.weight.shape[0]
        mean = mod.running_mean.detach().double().numpy()
        var = mod.running_var.detach().double().numpy()
        gamma = mod.weight.detach().double().numpy() if mod.weight is not None else np.ones(channels)
        beta = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(channels)
        stats = np.concatenate([mean, var, gamma, beta])
        if not np.all(np.isfinite(stats)) or np.any(var + float(mod.eps) <= 0):
            raise InvalidArgumentError(
                f"BatchNorm at module {_module_path(node)!r} has NaN or Inf parameters or a non-positive running "
                "variance; the model diverged or its state is corrupt, so it cannot be exported"
            )
        g = gamma / np.sqrt(var + float(mod.eps))
        bias = target.bias if target.bias is not None else np.zeros(channels)
        target.weight = target.weight * g.reshape((-1,) + (1,) * (target.weight.ndim - 1))
        target.bias = (bias - mean) * g + beta
        return _Val(x.ref, x.shape, node)

    def check_bn_stats(self, node: fx.Node, mod: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        assert mod.running_mean is not None and mod.running_var is not None
        parts = [mod.running_mean, mod.running_var, *(t for t in (mod.weight, mod.bias) if t is not None)]
        stats = np.concatenate([t.detach().double().numpy().reshape(-1) for t in parts])
        var = mod.running_var.detach().double().numpy()
        if not np.all(np.isfinite(stats)) or np.any(var + float(mod.eps) <= 0):
            raise InvalidArgumentError(
                f"BatchNorm at module {_module_path(node)!r} has NaN or Inf parameters or a non-positive running "
                "variance; the model diverged or its state is corrupt, so it cannot be exported"
            )

    def pool(
        self,
        node: fx.Node,
        op: str,
        x: _Val,
        dims: int,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        ceil_mode: bool,
    ) -> _Val:
        if len(x.shape) != dims + 1:
            raise _unsupported(node, self.gm, f"{dims}-D pooling of an input of shape {x.shape}")
        if any(d != 1 for d in _tuple(dilation, dims)):
            raise _unsupported(node, self.gm, "dilation")
        if ceil_mode:
            raise _unsupported(node, self.gm, "ceil_mode=True")
        kernel = _tuple(kernel_size, dims)
        strides = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else stride
        return self.emit(
            node,
            op,
            [x],
            self.fx_shape(node),
            kernel_size=kernel,
            stride=_tuple(strides, dims),
            padding=_tuple(padding, dims),
        )

    def global_pool(self, node: fx.Node, x: _Val, keepdim: bool) -> _Val:
        if len(x.shape) < 2:
            raise _unsupported(node, self.gm, f"global pooling of an input of shape {x.shape}")
        out = self.emit(node, "global_avgpool", [x], (x.shape[0],))
        if keepdim and len(self.fx_shape(node)) > 1:
            out.squeezed = True
        return out

    def flatten(self, node: fx.Node, x: _Val) -> _Val:
        if len(x.shape) == 1:
            return self.alias(x, node, squeezed=False)
        return self.emit(node, "flatten", [x], (math.prod(x.shape),))

    def reshape(self, node: fx.Node, x: _Val) -> _Val:
        out = self.fx_shape(node)
        if x.ref == INPUT and not x.squeezed and not self.input_used and _tensor_users(x.fx_node) == 1:
            # A reshape of the model input itself: the proxy takes the reshaped shape as its input.
            self.input_shape = out
            return _Val(INPUT, out, node)
        numel = math.prod(x.shape)
        if len(out) == 1 and out[0] == numel:
            return self.flatten(node, x)
        if out == x.shape and not x.squeezed:
            return self.alias(x, node)
        if x.squeezed:  # the pooled (C,) already holds the elements in order: reshape it directly
            return self.emit_raw(node, "reshape", [x.ref], out, dims=list(out))
        return self.emit(node, "reshape", [x], out, dims=list(out))

    # --- result -------------------------------------------------------------------------------------------------

    def live_nodes(self, roots: list[str]) -> list[_Node]:
        keep: set[str] = set()
        stack = [r for r in roots if r != INPUT]
        while stack:
            name = stack.pop()
            if name in keep:
                continue
            keep.add(name)
            stack.extend(s for s in self.nodes[name].inputs if s != INPUT)
        return [n for n in self.nodes.values() if n.name in keep]


def _bind(node: fx.Node, names: list[str]) -> dict[str, Any]:
    """Positional and keyword arguments of a call by parameter name."""
    bound = dict(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    if "input" not in bound and "self" in bound:
        bound["input"] = bound["self"]
    return bound


#: Ops whose weight is quantized (per output channel); norms and constants stay float32.
_QUANTIZED = {"conv1d", "conv2d", "linear", "embedding"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tensor_msg(name: str, array: np.ndarray, quantize: str | None) -> pb.Tensor:
    t = pb.Tensor(name=name, shape=[int(v) for v in array.shape])
    if quantize == "int8":
        q, scales = quantize_per_channel(array)
        t.dtype = pb.DTYPE_INT8
        t.data = q.tobytes()
        t.scales.extend(float(s) for s in scales)
    else:
        t.dtype = pb.DTYPE_FLOAT32
        t.data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return t


def export(
    module: nn.Module,
    example_input: torch.Tensor,
    quantize: str | None = "int8",
    version: int = 0,
    normalization: Normalization | None = None,
    fallback: bool = True,
    image: ImagePrep | None = None,
    head_only: bool = False,
) -> Proxy:
    """Export ``module`` to a proxy.

    Args:
        module: the model; traced with torch.fx in eval mode (its training flag is restored afterwards).
        example_input: a batch the model accepts, ``(N, ...)`` with N >= 1; the per-sample shape (after any reshape
            of the input inside ``forward``) becomes the proxy's input shape.
        quantize: ``"int8"`` (symmetric per output channel) or ``None`` (float32 weights).
        version: the proxy's version (the trainer's epoch).
        normalization: how stored samples become the model's input (default: float32 samples used as they are).
        image: for a dataset of encoded images (png, jpeg), how the daemon decodes them before the
            normalization (:class:`nessa.store.images.ImagePrep`: mode, resize, center crop); its ``(H, W, C)``
            must map to the proxy's input shape. Needs ``normalization`` of dtype ``uint8``.
        head_only: export only the model's last linear layer (the cheap proxy): its input, the per-sample
            penultimate features, is computed by the trainer (:func:`head_features`) and attached with
            :func:`with_features`; the daemon then reads no samples to select.
        fallback: when the model has an op outside the vocabulary, carry it as a ``torch.export`` program instead
            (only the torch engine runs it; :attr:`Proxy.program_reason` names the op). ``False`` raises instead.

    Returns:
        A sealed (checksummed) and validated :class:`Proxy`.

    Raises:
        InvalidArgumentError: an op outside the vocabulary (named, with its module path), an untraceable model,
            bad arguments.
    """
    if quantize not in ("int8", None):
        raise InvalidArgumentError(f"quantize must be 'int8' or None; got {quantize!r}")
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(f"export needs a torch.nn.Module; got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2 or example_input.shape[0] < 1:
        raise InvalidArgumentError("example_input must be a tensor with a batch axis first, e.g. shape (1, 3, 32, 32)")
    norm = normalization if normalization is not None else Normalization()
    if not isinstance(norm, Normalization):
        raise InvalidArgumentError(f"normalization must be a nessa.proxy.Normalization; got {type(norm).__name__}")
    if head_only:
        return export_head(module, example_input, quantize=quantize, version=version)
    was_training = module.training
    module.eval()
    example = example_input.detach()
    example = example.float() if example.is_floating_point() else example
    try:
        ex = _Exporter(module, example)
        try:
            ex.run()
        except UnsupportedOpError as exc:
            if not fallback:
                raise
            from nessa.proxy.torch_program import export_program

            return _with_image(export_program(module, example, norm, int(version), exc), image)
    finally:
        module.train(was_training)
    out = ex.output
    if out is None or out.ref == INPUT or out.squeezed or len(out.shape) != 1:
        shape = None if out is None else out.shape
        raise InvalidArgumentError(
            f"the model's output has per-sample shape {shape}; a proxy's model must return (N, num_classes) logits"
        )
    linears = [n for n in ex.nodes.values() if n.op == "linear"]
    if not linears:
        raise InvalidArgumentError(
            "the model has no linear layer; the proxy's embedding is the input of the last linear layer"
        )
    embedding = linears[-1].inputs[0]
    msg = pb.Proxy(
        format_version=FORMAT_VERSION,
        version=int(version),
        num_classes=int(out.shape[0]),
        output=out.ref,
        embedding=embedding,
        producer=f"nessa.proxy.export; torch {torch.__version__}",
    )
    msg.input.shape.extend(ex.input_shape)
    msg.input.dtype = dtype_enum(norm.dtype)
    msg.input.scale = float(norm.scale)
    msg.input.mean.extend(norm.mean)
    msg.input.std.extend(norm.std)
    for n in ex.live_nodes([out.ref, embedding]):
        node = pb.Node(name=n.name, op=op_enum(n.op), inputs=n.inputs, source=n.source)
        node.kernel_size.extend(n.kernel_size)
        node.stride.extend(n.stride)
        node.padding.extend(n.padding)
        node.dims.extend(n.dims)
        node.alpha, node.beta, node.eps, node.groups = n.alpha, n.beta, n.eps, n.groups
        if n.weight is not None:
            node.weight = f"{n.name}.weight"
            q = quantize if n.op in _QUANTIZED else None
            msg.tensors.append(_tensor_msg(node.weight, n.weight, q))
            if n.bias is not None:
                node.bias = f"{n.name}.bias"
                msg.tensors.append(_tensor_msg(node.bias, n.bias, None))
        msg.nodes.append(node)
    proxy = Proxy(msg)
    proxy.validate()
    return _with_image(proxy, image)


def _with_image(proxy: Proxy, image: ImagePrep | None) -> Proxy:
    """``proxy`` with its image preprocessing recorded (checked against the input shape), sealed."""
    if image is not None:
        if not isinstance(image, ImagePrep):
            raise InvalidArgumentError(f"image must be a nessa.store.images.ImagePrep; got {type(image).__name__}")
        if proxy.input_dtype != np.uint8:
            raise InvalidArgumentError(
                "images decode to uint8 pixels: export with normalization=Normalization(dtype='uint8', scale=1/255)"
            )
        if image.shape is not None and sample_layout(image.shape, proxy.input_shape) is None:
            raise InvalidArgumentError(
                f"images cropped to {image.shape} (H, W, C) do not fit the proxy's input shape {proxy.input_shape}"
            )
        image.to_message(proxy.message.input.image)
    return proxy.seal()


def _head(module: nn.Module, x: torch.Tensor) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """The last ``nn.Linear`` a forward pass runs, its input and the model's output (in eval mode, no grad)."""
    from nessa.proxy.torch_program import _last_linear

    seen: list[torch.Tensor] = []
    was = module.training
    module.eval()
    try:
        head, _ = _last_linear(module, x[:1])
        if head is None:
            raise InvalidArgumentError("the model has no nn.Linear layer; a head-only proxy is its last linear layer")
        hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            with torch.no_grad():
                out = module(x)
        finally:
            hook.remove()
    finally:
        module.train(was)
    return head, seen[-1], out


def head_features(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per-sample penultimate features (the input of the last linear layer) of a batch, float32 ``(N, d)``."""
    _, feats, _ = _head(module, x)
    return feats.detach().reshape(feats.shape[0], -1).float().cpu().numpy()


def export_head(
    module: nn.Module, example_input: torch.Tensor, *, quantize: str | None = "int8", version: int = 0
) -> Proxy:
    """The head-only proxy of ``module``: its last linear layer on ``(d,)`` float32 features.

    Raises:
        InvalidArgumentError: no linear layer, or a model whose output is not that layer's output (something runs
            after it).
    """
    if quantize not in ("int8", None):
        raise InvalidArgumentError(f"quantize must be 'int8' or None; got {quantize!r}")
    head, feats, out = _head(module, example_input.detach())
    with torch.no_grad():
        again = head(feats)
    if feats.dim() != 2 or not isinstance(out, torch.Tensor) or again.shape != out.shape or not torch.equal(again, out):
        raise InvalidArgumentError(
            "a head-only proxy needs a model whose output is its last nn.Linear's output on (N, d) features; "
            "this model computes more after it (export the full proxy instead)"
        )
    w = head.weight.detach().double().numpy()
    b = None if head.bias is None else head.bias.detach().double().numpy()
    msg = pb.Proxy(
        format_version=FORMAT_VERSION,
        version=int(version),
        num_classes=int(w.shape[0]),
        output="head",
        embedding=INPUT,
        producer=f"nessa.proxy.export (head only); torch {torch.__version__}",
    )
    msg.input.shape.append(int(w.shape[1]))
    msg.input.dtype = dtype_enum("float32")
    msg.input.scale = 1.0
    node = pb.Node(name="head", op=op_enum("linear"), inputs=[INPUT], source="head", weight="head.weight")
    msg.tensors.append(_tensor_msg("head.weight", w, quantize))
    if b is not None:
        node.bias = "head.bias"
        msg.tensors.append(_tensor_msg("head.bias", b, None))
    msg.nodes.append(node)
    proxy = Proxy(msg)
    proxy.validate()
    return proxy.seal()


def with_features(proxy: Proxy, features: np.ndarray, indices: np.ndarray) -> Proxy:
    """A head-only ``proxy`` carrying ``features`` ``(n, d)`` of dataset ``indices`` ``(n,)``, validated and sealed."""
    feats = np.ascontiguousarray(features, dtype="<f4")
    idx = np.asarray(indices, dtype=np.int64)
    if feats.ndim != 2 or idx.shape != (feats.shape[0],):
        raise InvalidArgumentError(f"need (n, d) features and n indices; got {feats.shape} and {idx.shape}")
    msg = pb.Proxy()
    msg.CopyFrom(proxy.message)
    msg.features.CopyFrom(
        pb.Tensor(name="features", shape=list(feats.shape), dtype=pb.DTYPE_FLOAT32, data=feats.tobytes())
    )
    del msg.feature_indices[:]
    msg.feature_indices.extend(idx.tolist())
    out = Proxy(msg)
    out.validate()
    return out.seal()
