"""Proxies for daemon tests: real torch models exported by nessa.proxy, some edited on the wire to be adversarial."""

from __future__ import annotations

import torch

from nessa.proxy import Normalization, dumps, export
from nessa.trainer.models import mlp


def conv_proxy(version: int, padding: int = 2, channels: int = 4, weight_scale: float | None = None) -> bytes:
    """A conv1d proxy for the toy data ((40,) samples seen as (1, 40)); ``padding`` is set on the wire afterwards."""
    torch.manual_seed(version)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(1, channels, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool1d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(channels, 10),
    ).eval()
    if weight_scale is not None:
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(weight_scale)
    proxy = export(model, torch.zeros(1, 1, 40), quantize=None if weight_scale is not None else "int8", version=version)
    conv = next(n for n in proxy.message.nodes if n.weight and len(proxy.tensor(n.weight).shape) == 3)
    conv.padding[:] = [padding]
    return dumps(proxy)


def mlp_proxy(version: int, in_features: int = 40, num_classes: int = 10, dtype: str | None = None) -> bytes:
    """An MLP proxy; ``dtype`` sets the sample dtype it declares (e.g. ``uint8``)."""
    torch.manual_seed(version)
    model = mlp(in_features, num_classes, (16,)).eval()
    normalization = Normalization(dtype=dtype) if dtype is not None else None
    return dumps(export(model, torch.zeros(1, in_features), version=version, normalization=normalization))
