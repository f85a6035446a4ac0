"""The numpy engine: the proxy graph evaluated with the reference ops of :mod:`nessa.accel.reference.nn`.

It is the oracle the other engines are tested against; it runs only when asked for (``ProxyEngine("numpy")``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nessa.accel.reference import nn as ref
from nessa.proxy.format import Proxy
from nessa.proxy.graph import Engine, ProxyOutputs, interpret

__all__ = ["NumpyEngine", "NumpyOps"]


class NumpyOps:
    """:class:`~nessa.proxy.graph.GraphOps` over numpy arrays (float64 accumulation, float32 results)."""

    def normalize(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.normalize`."""
        return ref.normalize(x, mean, std, scale)

    def conv(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: list[int], padding: list[int]) -> Any:
        """conv1d or conv2d by the weight's rank."""
        fn = ref.conv1d if w.ndim == 3 else ref.conv2d
        return fn(x, w, b, stride, padding)

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.linear`."""
        return ref.linear(x, w, b)

    def relu(self, x: np.ndarray) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.relu`."""
        return ref.relu(x)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.add`."""
        return ref.add(a, b)

    def pool(self, kind: str, x: np.ndarray, kernel: list[int], stride: list[int], padding: list[int]) -> np.ndarray:
        """Max or average pooling, 1-D or 2-D by rank."""
        one_d = x.ndim == 3
        if kind == "maxpool":
            return (ref.maxpool1d if one_d else ref.maxpool2d)(x, kernel, stride, padding)
        return (ref.avgpool1d if one_d else ref.avgpool2d)(x, kernel, stride, padding)

    def global_avgpool(self, x: np.ndarray) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.global_avgpool`."""
        return ref.global_avgpool(x)

    def flatten(self, x: np.ndarray) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.flatten`."""
        return ref.flatten(x)

    def weight(self, proxy: Proxy, name: str) -> np.ndarray:
        """The proxy's dequantized float32 tensor."""
        return proxy.tensor(name)


class NumpyEngine(Engine):
    """Evaluates proxies with the numpy reference ops."""

    name = "numpy"

    def __init__(self) -> None:
        self._ops = NumpyOps()

    def forward(self, proxy: Proxy, x: np.ndarray, labels: np.ndarray, batch_size: int) -> ProxyOutputs:
        """One batch; see :meth:`nessa.proxy.graph.Engine.forward`."""
        logits, emb = interpret(proxy, x, self._ops)
        grad, loss = ref.softmax_xent(logits, labels)
        return ProxyOutputs(
            logits=np.asarray(logits, np.float32),
            grad_embedding=grad,
            loss=loss,
            embedding=np.asarray(emb, np.float32).reshape(x.shape[0], -1),
        )
