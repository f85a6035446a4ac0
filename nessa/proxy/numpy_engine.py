"""The numpy engine: the proxy graph evaluated with the reference ops of :mod:`nessa.accel.reference.nn`.

It is the oracle the other engines are tested against; it runs only when asked for (``ProxyEngine("numpy")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nessa.accel.reference import nn as ref
from nessa.errors import InvalidArgumentError
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

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.linear`; ``(N, ..., F)`` inputs run as rows."""
        lead = x.shape[:-1]
        return ref.linear(x.reshape(-1, x.shape[-1]), w, b).reshape(*lead, w.shape[0])

    def unary(self, x: np.ndarray, kind: str) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.unary`."""
        return ref.unary(x, kind)

    def softmax(self, x: np.ndarray) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.softmax`."""
        return ref.softmax(x)

    def scale(self, x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.scale`."""
        return ref.scale(x, alpha, beta)

    def layernorm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, eps: float) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.layernorm`."""
        return ref.layernorm(x, w, b, eps)

    def groupnorm(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, groups: int, eps: float) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.groupnorm`."""
        return ref.groupnorm(x, w, b, groups, eps)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.matmul`."""
        return ref.matmul(a, b)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, alpha: float) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.attention`."""
        return ref.attention(q, k, v, alpha)

    def binary(self, a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.binary`."""
        return ref.binary(a, b, kind)

    def embedding(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.embedding`."""
        return ref.embedding(x, w)

    def reshape(self, x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """``x.reshape(shape)``."""
        return np.asarray(x).reshape(tuple(shape))

    def permute(self, x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
        """``x.transpose(axes)`` (contiguous)."""
        return np.ascontiguousarray(np.asarray(x).transpose(tuple(axes)))

    def concat(self, xs: Sequence[np.ndarray], axis: int, n: int) -> np.ndarray:
        """Concatenate, repeating batch-of-one constants to ``n``."""
        full = [np.broadcast_to(a, (n, *a.shape[1:])) if a.shape[0] != n else a for a in xs]
        return np.concatenate(full, axis=axis).astype(np.float32, copy=False)

    def slice(self, x: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
        """``x[..., start:stop, ...]`` along ``axis``."""
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, stop)
        return np.ascontiguousarray(x[tuple(index)])

    def mean(self, x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
        """See :func:`nessa.accel.reference.nn.mean_axes`."""
        return ref.mean_axes(x, axes)

    def constant(self, w: np.ndarray) -> np.ndarray:
        """``w`` as a batch of one."""
        return np.asarray(w, np.float32)[None]

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
        if proxy.program:
            raise InvalidArgumentError(
                f"this proxy is a torch.export program ({proxy.program_reason} is outside the proxy vocabulary); "
                "only the torch engine runs it"
            )
        logits, emb = interpret(proxy, x, self._ops)
        grad, loss = ref.softmax_xent(logits, labels)
        return ProxyOutputs(
            logits=np.asarray(logits, np.float32),
            grad_embedding=grad,
            loss=loss,
            embedding=np.asarray(emb, np.float32).reshape(x.shape[0], -1),
        )
