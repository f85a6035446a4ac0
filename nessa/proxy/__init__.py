"""The model proxy: format, export from torch, and the engines that run it next to the data.

* :func:`export` traces a torch module (torch.fx), folds BatchNorm, quantizes weights to int8 per output channel
  and returns a :class:`Proxy`;
* :func:`dumps` / :func:`loads` are the wire form (``nessa.v1.Proxy``, checksummed; ``loads`` validates);
* :class:`ProxyEngine` runs a proxy over samples (``"opencl"`` by default, ``"torch"``, or ``"numpy"``) and returns
  :class:`ProxyOutputs`: logits, the last-layer gradient ``softmax(z) - onehot(y)``, loss and embedding.
"""

from __future__ import annotations

from nessa.proxy.engine import BACKENDS, DEFAULT_BATCH_SIZE, ProxyEngine, ProxyOutputs
from nessa.proxy.export import export
from nessa.proxy.format import INPUT, Normalization, Proxy, dumps, loads
from nessa.proxy.quantize import dequantize, quantize_per_channel

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "INPUT",
    "Normalization",
    "Proxy",
    "ProxyEngine",
    "ProxyOutputs",
    "dequantize",
    "dumps",
    "export",
    "loads",
    "quantize_per_channel",
]
