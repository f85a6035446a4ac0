"""Export a torch module to a :class:`~nessa.proxy.format.Proxy` (torch.fx tracing, BatchNorm folding, int8).

The module is traced with :func:`torch.fx.symbolic_trace` and its shapes propagated with the example input. Each
graph node maps onto the proxy vocabulary:

==========================  =====================================================================================
proxy op                    torch forms accepted
==========================  =====================================================================================
``conv1d`` / ``conv2d``     ``nn.Conv1d`` / ``nn.Conv2d`` (groups=1, dilation=1, zero padding; ``"same"`` only when
                            symmetric)
``linear``                  ``nn.Linear`` on a flat input
``relu``                    ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()`` (in-place forms too)
``add``                     ``a + b``, ``a += b``, ``torch.add(a, b)``, ``a.add(b)`` (same shapes, no alpha)
``maxpool`` / ``avgpool``   ``nn.MaxPool{1,2}d``, ``nn.AvgPool{1,2}d``, ``F.max_pool{1,2}d``, ``F.avg_pool{1,2}d``
                            (no dilation or ceil mode; average pooling counts padding)
``global_avgpool``          ``nn.AdaptiveAvgPool{1,2}d(1)``, ``F.adaptive_avg_pool{1,2}d(x, 1)``,
                            ``x.mean((2, 3))`` / ``x.mean(-1)`` over every spatial axis
``flatten``                 ``nn.Flatten()``, ``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view/reshape(N, -1)``
(folded)                    ``nn.BatchNorm{1,2}d`` right after a conv/linear whose output nothing else reads
(dropped)                   ``nn.Identity``, ``nn.Dropout`` (inference), ``x.contiguous()``
(input shape)               a reshape/view/unsqueeze of the model input itself becomes the proxy's input shape
==========================  =====================================================================================

Anything else raises :class:`~nessa.errors.InvalidArgumentError` naming the op and the module path, e.g.
``unsupported op 'GELU' at module 'blocks.2.act'; supported: ...``.

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
from nessa.proxy.format import FORMAT_VERSION, INPUT, Normalization, Proxy, dtype_enum, op_enum
from nessa.proxy.quantize import quantize_per_channel
from nessa.v1 import proxy_pb2 as pb

__all__ = ["SUPPORTED", "export"]

#: What export accepts, for error messages.
SUPPORTED = (
    "Conv1d, Conv2d, Linear, ReLU, add, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d(1) or mean over spatial "
    "axes, Flatten/view/reshape to (N, -1), BatchNorm1d/2d after a conv/linear (folded), Identity, Dropout"
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


def _unsupported(node: fx.Node, gm: fx.GraphModule, why: str = "") -> InvalidArgumentError:
    extra = f" ({why})" if why else ""
    return InvalidArgumentError(
        f"unsupported op {_op_name(node, gm)!r} at module {_module_path(node)!r}{extra}; supported: {SUPPORTED}"
    )


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
_RESHAPE_FUNCS: set[Callable[..., Any]] = {torch.reshape}
_MAXPOOL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2}
_AVGPOOL_FUNCS = {F.avg_pool1d: 1, F.avg_pool2d: 2}
_ADAPTIVE_FUNCS: set[Callable[..., Any]] = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
_MEAN_FUNCS: set[Callable[..., Any]] = {torch.mean}


class _Exporter:
    def __init__(self, module: nn.Module, example: torch.Tensor) -> None:
        self.module = module
        try:
            self.gm = fx.symbolic_trace(module)
        except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
            raise InvalidArgumentError(
                f"cannot trace {type(module).__name__} with torch.fx ({type(exc).__name__}: {exc}); proxies need a "
                "forward without data-dependent control flow"
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
        if v.squeezed:
            raise InvalidArgumentError(
                f"the global average pool feeding {_module_path(node)!r} keeps its spatial axes and is then used by "
                f"{_op_name(node, self.gm)!r}; a proxy supports only a flatten right after it "
                f"(supported: {SUPPORTED})"
            )
        if v.ref == INPUT:
            self.input_used = True
        return v.ref

    def emit(self, node: fx.Node, op: str, inputs: list[_Val], out_shape: Shape, **kw: Any) -> _Val:
        refs = [self.use(v, node) for v in inputs]
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
                raise _unsupported(node, self.gm, "direct parameter use")
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
            if len(x.shape) != 1:
                raise _unsupported(node, self.gm, f"linear on an input of shape {x.shape}; flatten it first")
            w = mod.weight.detach().double().numpy()
            b = None if mod.bias is None else mod.bias.detach().double().numpy()
            return self.emit(node, "linear", [x], (int(mod.out_features),), weight=w, bias=b)
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
        if isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d):
            dims = 1 if isinstance(mod, nn.AdaptiveAvgPool1d) else 2
            if any(v != 1 for v in _tuple(mod.output_size, dims)):
                raise _unsupported(node, self.gm, f"output_size={mod.output_size}; only 1 (global pooling) is")
            return self.global_pool(node, x, keepdim=True)
        if isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise _unsupported(node, self.gm, f"Flatten({mod.start_dim}, {mod.end_dim}); only Flatten(1, -1) is")
            return self.flatten(node, x)
        raise _unsupported(node, self.gm)

    def function_node(self, node: fx.Node) -> _Val:
        t = node.target
        method = node.op == "call_method"
        args, kwargs = list(node.args), dict(node.kwargs)
        if (method and t in ("relu", "relu_")) or (not method and t in _RELU_FUNCS):
            return self.emit(node, "relu", [self.val(args[0], node)], self.val(args[0], node).shape)
        if (method and t in ("add", "add_", "__add__", "__iadd__")) or (not method and t in _ADD_FUNCS):
            if kwargs.get("alpha", 1) != 1 or len(args) > 2:
                raise _unsupported(node, self.gm, "add with alpha")
            a, b = self.val(args[0], node), self.val(args[1] if len(args) > 1 else kwargs.get("other"), node)
            if a.shape != b.shape:
                raise _unsupported(node, self.gm, f"adding shapes {a.shape} and {b.shape} (broadcasting)")
            return self.emit(node, "add", [a, b], a.shape)
        if method and t == "contiguous":
            return self.alias(self.val(args[0], node), node)
        if (method and t == "flatten") or (not method and t in _FLATTEN_FUNCS):
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise _unsupported(node, self.gm, f"flatten({start}, {end}); only flatten(x, 1) is")
            return self.flatten(node, self.val(args[0], node))
        if (method and t in ("view", "reshape", "unsqueeze")) or (not method and t in _RESHAPE_FUNCS):
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
            if any(v != 1 for v in _tuple(p["output_size"], len(x.shape) - 1)):
                raise _unsupported(node, self.gm, "adaptive pooling to a size other than 1")
            return self.global_pool(node, x, keepdim=True)
        if (method and t == "mean") or (not method and t in _MEAN_FUNCS):
            p = _bind(node, ["input", "dim", "keepdim"])
            x = self.val(p["input"], node)
            rank = len(x.shape) + 1
            dim = p.get("dim")
            axes = {int(d) % rank for d in ([dim] if isinstance(dim, int) else (dim or ()))}
            if len(x.shape) < 2 or axes != set(range(2, rank)):
                raise _unsupported(node, self.gm, "mean over anything but every spatial axis")
            return self.global_pool(node, x, keepdim=bool(p.get("keepdim", False)))
        raise _unsupported(node, self.gm)

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
        target = self.nodes.get(x.ref)
        if target is None or target.weight is None:
            raise _unsupported(node, self.gm, "BatchNorm must follow a conv or linear layer to be folded into it")
        if not x.sole or _tensor_users(x.fx_node) != 1 or x.shape != target.out_shape or x.squeezed:
            raise _unsupported(
                node, self.gm, f"BatchNorm's input (from {target.source!r}) is also used elsewhere; cannot fold it"
            )
        if mod.running_mean is None or mod.running_var is None:
            raise _unsupported(node, self.gm, "BatchNorm without running statistics (track_running_stats=False)")
        channels = target.weight.shape[0]
        if mod.num_features != channels:
            raise _unsupported(node, self.gm, f"BatchNorm of {mod.num_features} features after {channels} channels")
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
        if out == x.shape:
            return self.alias(x, node)
        raise _unsupported(node, self.gm, f"reshape of {x.shape} to {out}; only flattening to (N, -1) is")

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
) -> Proxy:
    """Export ``module`` to a proxy.

    Args:
        module: the model; traced with torch.fx in eval mode (its training flag is restored afterwards).
        example_input: a batch the model accepts, ``(N, ...)`` with N >= 1; the per-sample shape (after any reshape
            of the input inside ``forward``) becomes the proxy's input shape.
        quantize: ``"int8"`` (symmetric per output channel) or ``None`` (float32 weights).
        version: the proxy's version (the trainer's epoch).
        normalization: how stored samples become the model's input (default: float32 samples used as they are).

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
    was_training = module.training
    module.eval()
    try:
        ex = _Exporter(module, example_input.detach().float())
        ex.run()
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
        if n.weight is not None:
            node.weight = f"{n.name}.weight"
            msg.tensors.append(_tensor_msg(node.weight, n.weight, quantize))
            if n.bias is not None:
                node.bias = f"{n.name}.bias"
                msg.tensors.append(_tensor_msg(node.bias, n.bias, None))
        msg.nodes.append(node)
    proxy = Proxy(msg)
    proxy.validate()
    return proxy.seal()
