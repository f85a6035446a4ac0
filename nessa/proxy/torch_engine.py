"""The torch engine: the proxy graph run with torch ops on the proxy's dequantized float32 weights.

Contract: the same weights as the OpenCL engine (``Proxy.tensor``), so the two differ only by float32 accumulation
order; torch's thread pool is left as it is.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nessa.errors import InvalidArgumentError
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

    def unary(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Activation ``kind`` (GELU is the exact erf form)."""
        fn = {"relu": torch.relu, "gelu": F.gelu, "silu": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
        return fn[kind](x)

    def softmax(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the last axis."""
        return torch.softmax(x, dim=-1)

    def scale(self, x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        """``x * alpha + beta``."""
        return x * float(np.float32(alpha)) + float(np.float32(beta))

    def layernorm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, eps: float) -> torch.Tensor:
        """LayerNorm over the last axis."""
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def groupnorm(
        self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, groups: int, eps: float
    ) -> torch.Tensor:
        """GroupNorm over axis 1."""
        return F.group_norm(x, groups, w, b, eps)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Batched ``a @ b``."""
        return torch.matmul(a, b)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
        """``F.scaled_dot_product_attention`` (``alpha`` 0: its default scale)."""
        return F.scaled_dot_product_attention(q, k, v, scale=float(alpha) if alpha else None)

    def binary(self, a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
        """``a + b`` or ``a * b``, broadcast."""
        return a + b if kind == "add" else a * b

    def embedding(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Rows of ``w`` at the rounded indices; NaN rows outside ``[0, V)``."""
        idx = torch.round(x)
        ok = (idx >= 0) & (idx < w.shape[0])
        rows = F.embedding(torch.where(ok, idx, torch.zeros_like(idx)).long(), w)
        return torch.where(ok[..., None], rows, torch.full_like(rows, float("nan")))

    def reshape(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """``x.reshape(shape)``."""
        return x.reshape(tuple(int(v) for v in shape))

    def permute(self, x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
        """``x.permute(axes)`` (contiguous)."""
        return x.permute(tuple(int(a) for a in axes)).contiguous()

    def concat(self, xs: Sequence[torch.Tensor], axis: int, n: int) -> torch.Tensor:
        """Concatenate, repeating batch-of-one constants to ``n``."""
        return torch.cat([a.expand(n, *a.shape[1:]) if a.shape[0] != n else a for a in xs], dim=axis)

    def slice(self, x: torch.Tensor, axis: int, start: int, stop: int) -> torch.Tensor:
        """``start <= i < stop`` along ``axis``."""
        return x.narrow(axis, start, stop - start).contiguous()

    def mean(self, x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
        """Mean over ``axes``."""
        return x.mean(dim=tuple(int(a) for a in axes))

    def constant(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` as a batch of one."""
        return w[None]

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
        self._program: tuple[str, Any] | None = None

    def _program_module(self, proxy: Proxy) -> Any:
        """The proxy's torch.export program as a callable module (loaded once per proxy)."""
        key = proxy.checksum or proxy.compute_checksum()
        if self._program is None or self._program[0] != key:
            try:
                program = torch.export.load(io.BytesIO(proxy.program))
            except Exception as exc:  # torch.export raises many kinds on bad bytes
                raise InvalidArgumentError(
                    f"the proxy's torch.export program does not load ({type(exc).__name__}: {exc}); re-export it "
                    f"with this torch version ({torch.__version__})"
                ) from exc
            self._program = (key, program.module())
        return self._program[1]

    def forward(self, proxy: Proxy, x: np.ndarray, labels: np.ndarray, batch_size: int) -> ProxyOutputs:
        """One batch; see :meth:`nessa.proxy.graph.Engine.forward`."""
        with torch.inference_mode():
            if proxy.program:
                spec = proxy.message.input
                xin = self._ops.normalize(
                    x, np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32), spec.scale
                )
                logits, emb = self._program_module(proxy)(xin)
            else:
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
