"""The proxy engine interface: :class:`Engine`, its :class:`ProxyOutputs`, and the shared graph walk.

:func:`interpret` evaluates a proxy with a :class:`GraphOps` (the torch and numpy engines); :func:`live_order` is the
node order every engine runs.

Engines (:mod:`nessa.proxy.opencl_engine`, :mod:`~nessa.proxy.torch_engine`, :mod:`~nessa.proxy.numpy_engine`)
import this module; this module imports none of them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.proxy.format import INPUT, Proxy
from nessa.v1 import proxy_pb2 as pb

__all__ = ["Engine", "GraphOps", "ProxyOutputs", "interpret", "live_order"]


@dataclass(frozen=True)
class ProxyOutputs:
    """Per-sample outputs of a proxy forward pass (numpy, float32).

    Attributes:
        logits: ``(N, C)``.
        grad_embedding: ``softmax(logits) - onehot(labels)``, ``(N, C)``: the gradient of the loss with respect to
            the logits (the last-layer gradient proxy).
        loss: per-sample cross-entropy, ``(N,)``.
        embedding: the marked node's output (the input of the last linear layer), ``(N, d)``.
    """

    logits: np.ndarray
    grad_embedding: np.ndarray
    loss: np.ndarray
    embedding: np.ndarray

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @staticmethod
    def concat(parts: Sequence[ProxyOutputs]) -> ProxyOutputs:
        """Concatenate batch outputs in order."""
        if len(parts) == 1:
            return parts[0]
        return ProxyOutputs(
            logits=np.concatenate([p.logits for p in parts]),
            grad_embedding=np.concatenate([p.grad_embedding for p in parts]),
            loss=np.concatenate([p.loss for p in parts]),
            embedding=np.concatenate([p.embedding for p in parts]),
        )


class Engine(abc.ABC):
    """Runs one batch of a validated proxy on one kind of device. Subclasses set :attr:`name`."""

    name: ClassVar[str]

    @abc.abstractmethod
    def forward(self, proxy: Proxy, x: np.ndarray, labels: np.ndarray, batch_size: int) -> ProxyOutputs:
        """Outputs for one batch.

        Args:
            proxy: a validated proxy.
            x: raw samples ``(n, *proxy.input_shape)`` of the proxy's input dtype, ``1 <= n <= batch_size``.
            labels: int64 ``(n,)`` in range.
            batch_size: the largest ``n`` this engine will pass (for buffer planning).
        """


class GraphOps(Protocol):
    """Op implementations :func:`interpret` calls (numpy or torch arrays, batch axis first)."""

    def normalize(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float) -> Any:
        """Raw batch to model input."""
        ...

    def conv(self, x: Any, w: Any, b: Any | None, stride: list[int], padding: list[int]) -> Any:
        """conv1d or conv2d by the weight's rank."""
        ...

    def linear(self, x: Any, w: Any, b: Any | None) -> Any:
        """Fully connected layer."""
        ...

    def relu(self, x: Any) -> Any:
        """ReLU."""
        ...

    def add(self, a: Any, b: Any) -> Any:
        """Elementwise sum."""
        ...

    def pool(self, kind: str, x: Any, kernel: list[int], stride: list[int], padding: list[int]) -> Any:
        """``kind`` is ``"maxpool"`` or ``"avgpool"``; 1-D or 2-D by the input's rank."""
        ...

    def global_avgpool(self, x: Any) -> Any:
        """Mean over the spatial axes."""
        ...

    def flatten(self, x: Any) -> Any:
        """``(N, ...)`` to ``(N, -1)``."""
        ...

    def weight(self, proxy: Proxy, name: str) -> Any:
        """The dequantized float32 tensor ``name`` in this engine's array type."""
        ...

    def unary(self, x: Any, kind: str) -> Any:
        """Activation ``kind`` (relu, gelu, silu, sigmoid, tanh) elementwise."""
        ...

    def softmax(self, x: Any) -> Any:
        """Softmax over the last axis."""
        ...

    def scale(self, x: Any, alpha: float, beta: float) -> Any:
        """``x * alpha + beta``."""
        ...

    def layernorm(self, x: Any, w: Any, b: Any | None, eps: float) -> Any:
        """LayerNorm over the last axis."""
        ...

    def groupnorm(self, x: Any, w: Any, b: Any | None, groups: int, eps: float) -> Any:
        """GroupNorm over axis 1 in ``groups`` groups."""
        ...

    def matmul(self, a: Any, b: Any) -> Any:
        """Batched matrix product over equal leading axes."""
        ...

    def attention(self, q: Any, k: Any, v: Any, alpha: float) -> Any:
        """``softmax(q k^T * alpha) v`` (``alpha`` 0: ``1/sqrt(d)``)."""
        ...

    def binary(self, a: Any, b: Any, kind: str) -> Any:
        """``a + b`` or ``a * b`` (``kind`` add/mul), broadcast; operands have equal ranks."""
        ...

    def embedding(self, x: Any, w: Any) -> Any:
        """Rows of ``w`` at the (rounded) indices ``x``; NaN rows outside ``[0, V)``."""
        ...

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        """Reshape to ``shape`` (batch axis included)."""
        ...

    def permute(self, x: Any, axes: Sequence[int]) -> Any:
        """Permute the axes (batch axis included, kept first)."""
        ...

    def concat(self, xs: Sequence[Any], axis: int, n: int) -> Any:
        """Join along ``axis``; an operand with batch size 1 (a constant) is repeated to ``n``."""
        ...

    def slice(self, x: Any, axis: int, start: int, stop: int) -> Any:
        """``start <= i < stop`` along ``axis``."""
        ...

    def mean(self, x: Any, axes: Sequence[int]) -> Any:
        """Mean over ``axes`` (removed)."""
        ...

    def constant(self, w: Any) -> Any:
        """A constant tensor as a batch of one."""
        ...


def live_order(proxy: Proxy) -> list[pb.Node]:
    """The nodes the output and embedding depend on, in topological order."""
    by_name = {n.name: n for n in proxy.nodes}
    need: set[str] = set()
    stack = [r for r in (proxy.output, proxy.embedding) if r != INPUT]
    while stack:
        name = stack.pop()
        if name not in need:
            need.add(name)
            stack.extend(s for s in by_name[name].inputs if s != INPUT)
    return [n for n in proxy.order() if n.name in need]


def interpret(proxy: Proxy, x: np.ndarray, ops: GraphOps) -> tuple[Any, Any]:
    """Evaluate ``proxy`` on raw batch ``x`` with ``ops``; return ``(logits, embedding)`` in the ops' array type."""
    spec = proxy.message.input
    values: dict[str, Any] = {
        INPUT: ops.normalize(x, np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32), spec.scale)
    }
    order = live_order(proxy)
    remaining: dict[str, int] = {}
    for node in order:
        for src in node.inputs:
            remaining[src] = remaining.get(src, 0) + 1
    keep = {proxy.output, proxy.embedding}
    for node in order:
        op = proxy.op(node)
        ins = [values[s] for s in node.inputs]
        if op in ("conv1d", "conv2d"):
            stride, padding = proxy.conv_params(node)
            bias = ops.weight(proxy, node.bias) if node.bias else None
            out = ops.conv(ins[0], ops.weight(proxy, node.weight), bias, stride, padding)
        elif op == "linear":
            bias = ops.weight(proxy, node.bias) if node.bias else None
            out = ops.linear(ins[0], ops.weight(proxy, node.weight), bias)
        elif op == "relu":
            out = ops.relu(ins[0])
        elif op == "add" and tuple(ins[0].shape) == tuple(ins[1].shape):
            out = ops.add(ins[0], ins[1])
        elif op in ("maxpool", "avgpool"):
            kernel, stride, padding = proxy.pool_params(node, len(ins[0].shape) - 2)
            out = ops.pool(op, ins[0], kernel, stride, padding)
        elif op == "global_avgpool":
            out = ops.global_avgpool(ins[0])
        elif op == "flatten":
            out = ops.flatten(ins[0])
        else:
            out = _extended(proxy, node, op, ins, ops, int(x.shape[0]))
        values[node.name] = out
        for src in node.inputs:
            remaining[src] -= 1
            if remaining[src] == 0 and src not in keep:
                del values[src]
    return values[proxy.output], values[proxy.embedding]


def _same_rank(ops: GraphOps, a: Any, rank: int) -> Any:
    """``a`` with size-1 axes inserted after the batch axis up to ``rank`` axes (per-sample right alignment)."""
    shape = tuple(int(v) for v in a.shape)
    if len(shape) == rank:
        return a
    return ops.reshape(a, (shape[0], *(1,) * (rank - len(shape)), *shape[1:]))


def _extended(proxy: Proxy, node: pb.Node, op: str, ins: list[Any], ops: GraphOps, n: int) -> Any:
    """The ops beyond conv/linear/pool; per-sample axes in ``node.dims`` become full-array axes (+1)."""
    dims = [int(v) for v in node.dims]
    if op in ("relu", "gelu", "silu", "sigmoid", "tanh"):
        return ops.unary(ins[0], op)
    if op == "softmax":
        return ops.softmax(ins[0])
    if op == "scale":
        return ops.scale(ins[0], float(node.alpha), float(node.beta))
    if op in ("layernorm", "groupnorm"):
        w = ops.weight(proxy, node.weight)
        b = ops.weight(proxy, node.bias) if node.bias else None
        if op == "layernorm":
            return ops.layernorm(ins[0], w, b, float(node.eps))
        return ops.groupnorm(ins[0], w, b, int(node.groups), float(node.eps))
    if op == "matmul":
        return ops.matmul(ins[0], ins[1])
    if op == "attention":
        return ops.attention(ins[0], ins[1], ins[2], float(node.alpha))
    if op in ("add", "mul"):
        rank = max(len(ins[0].shape), len(ins[1].shape))
        return ops.binary(_same_rank(ops, ins[0], rank), _same_rank(ops, ins[1], rank), op)
    if op == "embedding":
        return ops.embedding(ins[0], ops.weight(proxy, node.weight))
    if op == "reshape":
        return ops.reshape(ins[0], (int(ins[0].shape[0]), *dims))
    if op == "permute":
        return ops.permute(ins[0], (0, *(d + 1 for d in dims)))
    if op == "concat":
        return ops.concat(ins, dims[0] + 1, n)
    if op == "slice":
        return ops.slice(ins[0], dims[0] + 1, dims[1], dims[2])
    if op == "mean":
        return ops.mean(ins[0], [d + 1 for d in dims])
    if op == "constant":
        return ops.constant(ops.weight(proxy, node.weight))
    raise InvalidArgumentError(f"proxy node {node.name!r} has op {op!r}, which this engine does not run")
