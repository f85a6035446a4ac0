"""ConvNet-1D with instance norm, run functionally on one flat parameter vector.

Trajectory matching unrolls SGD steps on the network's parameters and back-propagates through them, so the
network is written as a pure function ``forward(spec, flat, x)`` of a flat parameter vector: an expert checkpoint,
a student state and a gradient step are all plain 1-D tensors. The architecture is MTT's ConvNet (conv 3 →
instance norm → ReLU → average pool 2, repeated ``depth`` times, then a linear classifier), in 1-D: instance norm
is ``GroupNorm(width, width)`` with affine parameters, as the MTT code builds it, so no batch statistics enter the
unrolled steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nessa.errors import InvalidArgumentError

__all__ = ["ConvNetSpec", "embed", "forward", "init_params"]


@dataclass(frozen=True)
class ConvNetSpec:
    """Shape of a ConvNet-1D.

    Attributes:
        length: samples are 1-D signals of this many values (one channel).
        num_classes: output logits.
        width: channels of every conv block.
        depth: conv blocks (each halves the length).
    """

    length: int
    num_classes: int
    width: int = 32
    depth: int = 3

    def __post_init__(self) -> None:
        if self.length < 2**self.depth:
            raise InvalidArgumentError(
                f"a {self.depth}-block ConvNet-1D needs signals of at least {2**self.depth} values; got {self.length}"
            )
        if self.num_classes < 2 or self.width < 1 or self.depth < 1:
            raise InvalidArgumentError("ConvNet-1D needs num_classes >= 2, width >= 1 and depth >= 1")

    @property
    def feature_dim(self) -> int:
        """Length of the embedding the classifier reads."""
        return self.width * (self.length >> self.depth)

    def shapes(self) -> list[tuple[int, ...]]:
        """Shape of every parameter, in the order they lie in the flat vector."""
        out: list[tuple[int, ...]] = []
        cin = 1
        for _ in range(self.depth):
            out += [(self.width, cin, 3), (self.width,), (self.width,), (self.width,)]
            cin = self.width
        out += [(self.num_classes, self.feature_dim), (self.num_classes,)]
        return out

    @property
    def num_params(self) -> int:
        """Length of the flat parameter vector."""
        return sum(math.prod(s) for s in self.shapes())


def init_params(spec: ConvNetSpec, generator: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """A fresh flat parameter vector: torch's default (Kaiming-uniform) conv/linear init, norm weight 1, bias 0.

    Drawn on the CPU from ``generator`` (the same values on every device), then moved to ``device``.
    """
    parts: list[torch.Tensor] = []
    cin = 1
    for _ in range(spec.depth):
        bound = 1.0 / math.sqrt(cin * 3)
        parts.append((torch.rand(spec.width * cin * 3, generator=generator) * 2 - 1) * bound)
        parts.append((torch.rand(spec.width, generator=generator) * 2 - 1) * bound)
        parts.append(torch.ones(spec.width))
        parts.append(torch.zeros(spec.width))
        cin = spec.width
    bound = 1.0 / math.sqrt(spec.feature_dim)
    parts.append((torch.rand(spec.num_classes * spec.feature_dim, generator=generator) * 2 - 1) * bound)
    parts.append((torch.rand(spec.num_classes, generator=generator) * 2 - 1) * bound)
    flat = torch.cat(parts)
    return flat if device is None else flat.to(device)


def _unflatten(spec: ConvNetSpec, flat: torch.Tensor) -> list[torch.Tensor]:
    if flat.ndim != 1 or flat.numel() != spec.num_params:
        raise InvalidArgumentError(f"expected a flat vector of {spec.num_params} parameters; got {tuple(flat.shape)}")
    out, at = [], 0
    for shape in spec.shapes():
        n = math.prod(shape)
        out.append(flat[at : at + n].view(shape))
        at += n
    return out


def embed(spec: ConvNetSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features, shape (n, feature_dim), for signals ``x`` of shape (n, length)."""
    params = _unflatten(spec, flat)
    h = x.reshape(x.shape[0], 1, -1)
    for b in range(spec.depth):
        w, bias, gw, gb = params[4 * b : 4 * b + 4]
        h = F.conv1d(h, w, bias, padding=1)
        h = F.group_norm(h, spec.width, gw, gb)
        h = F.avg_pool1d(F.relu(h), 2)
    return h.flatten(1)


def forward(spec: ConvNetSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits, shape (n, num_classes)."""
    w, b = _unflatten(spec, flat)[-2:]
    return F.linear(embed(spec, flat, x), w, b)
