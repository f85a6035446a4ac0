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
        elif op == "add":
            out = ops.add(ins[0], ins[1])
        elif op in ("maxpool", "avgpool"):
            kernel, stride, padding = proxy.pool_params(node, len(ins[0].shape) - 2)
            out = ops.pool(op, ins[0], kernel, stride, padding)
        elif op == "global_avgpool":
            out = ops.global_avgpool(ins[0])
        else:
            out = ops.flatten(ins[0])
        values[node.name] = out
        for src in node.inputs:
            remaining[src] -= 1
            if remaining[src] == 0 and src not in keep:
                del values[src]
    return values[proxy.output], values[proxy.embedding]
