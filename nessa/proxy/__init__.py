"""The model proxy: its wire format, export from torch, and the engines that run it next to the data.

* :func:`export` turns a torch module into a :class:`Proxy` (imported on first use: it needs torch);
  ``export(..., head_only=True)`` keeps only the last linear layer, fed by :func:`head_features` attached with
  :func:`with_features`;
* :func:`dumps` / :func:`loads` are the wire form (``nessa.v1.Proxy``, checksummed; ``loads`` validates);
* :class:`ProxyEngine` runs a proxy over samples with one engine of :data:`ENGINES` and returns
  :class:`ProxyOutputs`: logits, the last-layer gradient ``softmax(z) - onehot(y)``, loss and embedding.

Importing this package imports neither torch nor OpenCL; each engine imports its own on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nessa.proxy.engine import DEFAULT_BATCH_SIZE, ENGINES, ProxyEngine
from nessa.proxy.format import INPUT, Normalization, Proxy, dumps, loads
from nessa.proxy.graph import Engine, ProxyOutputs
from nessa.proxy.quantize import dequantize, quantize_per_channel

if TYPE_CHECKING:
    from nessa.proxy.torch_export import export, head_features, with_features

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ENGINES",
    "INPUT",
    "Engine",
    "Normalization",
    "Proxy",
    "ProxyEngine",
    "ProxyOutputs",
    "dequantize",
    "dumps",
    "export",
    "head_features",
    "loads",
    "quantize_per_channel",
    "with_features",
]


def __getattr__(name: str) -> Any:
    # ``export`` needs torch and torch.fx; import them only when it is asked for.
    if name in ("export", "head_features", "with_features"):
        from nessa.proxy import torch_export

        return getattr(torch_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
