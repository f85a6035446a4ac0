"""The torch engine: the proxy graph run with torch ops on the proxy's dequantized float32 weights.

Contract: the same weights as the OpenCL engine (``Proxy.tensor``), so the two differ only by float32 accumulation
order; torch's thread pool is left as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nessa.proxy.format import Proxy
from nessa.proxy.graph import Engine, ProxyOutputs, interpret

__all__ = ["TorchEngine", "TorchOps"]


class TorchOps:
    """:class:`~nessa.proxy.graph.GraphOps` over float32 torch tensors (weights converted once per proxy)."""

    def __init__(self) -> None:
        self._weights: dict[tuple[int, str], torch.Tensor] = {}
        self._proxy_id: int | None = None

    def normalize(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float) -> torch.Tensor:
        """``(x * scale - mean[c]) / std[c]`` in float32."""
        arr = np.ascontiguousarray(x)
        if not arr.flags.writeable:  # e.g. samples read straight from the store's buffers
            arr = arr.copy()
        t = torch.from_numpy(arr).to(torch.float32) * float(np.float32(scale))
        if mean.size:
            bshape = (1, -1) + (1,) * (t.dim() - 2)
            t = (t - torch.from_numpy(mean).reshape(bshape)) / torch.from_numpy(std).reshape(bshape)
        return t

    def conv(
        self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int], padding: list[int]
    ) -> torch.Tensor:
        """conv1d or conv2d by the weight's rank."""
        fn = F.conv1d if w.dim() == 3 else F.conv2d
        return fn(x, w, b, stride=stride, padding=padding)

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """Fully connected layer."""
        return F.linear(x, w, b)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU."""
        return torch.relu(x)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Elementwise sum."""
        return a + b

    def pool(self, kind: str, x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int]) -> Any:
        """Max or average pooling (padding counted in the average), 1-D or 2-D by rank."""
        one_d = x.dim() == 3
        if kind == "maxpool":
            return (F.max_pool1d if one_d else F.max_pool2d)(x, kernel, stride, padding)
        fn = F.avg_pool1d if one_d else F.avg_pool2d
        return fn(x, kernel, stride, padding, count_include_pad=True)

    def global_avgpool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over every spatial axis."""
        return x.mean(dim=tuple(range(2, x.dim())))

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, ...)`` to ``(N, -1)``."""
        return torch.flatten(x, 1)

    def weight(self, proxy: Proxy, name: str) -> torch.Tensor:
        """The proxy's dequantized float32 tensor as a torch tensor (cached for the current proxy)."""
        if self._proxy_id != id(proxy):
            self._weights.clear()
            self._proxy_id = id(proxy)
        key = (id(proxy), name)
        t = self._weights.get(key)
        if t is None:
            t = torch.from_numpy(proxy.tensor(name).copy())
            self._weights[key] = t
        return t


class TorchEngine(Engine):
    """Evaluates proxies with torch (CPU) ops."""

    name = "torch"

    def __init__(self) -> None:
        self._ops = TorchOps()

    def forward(self, proxy: Proxy, x: np.ndarray, labels: np.ndarray, batch_size: int) -> ProxyOutputs:
        """One batch; see :meth:`nessa.proxy.graph.Engine.forward`."""
        with torch.inference_mode():
            logits, emb = interpret(proxy, x, self._ops)
            y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
            logp = torch.log_softmax(logits, dim=1)
            grad = torch.softmax(logits, dim=1)
            grad[torch.arange(grad.shape[0]), y] -= 1.0
            loss = -logp.gather(1, y[:, None])[:, 0]
            return ProxyOutputs(
                logits=logits.numpy().astype(np.float32, copy=True),
                grad_embedding=grad.numpy().astype(np.float32, copy=True),
                loss=loss.numpy().astype(np.float32, copy=True),
                embedding=emb.reshape(emb.shape[0], -1).numpy().astype(np.float32, copy=True),
            )
