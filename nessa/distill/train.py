"""Plain training of a flat-parameter ConvNet-1D: expert trajectories on real data, fresh nets on synthetic sets.

Two recipes, as the MTT / PDD code uses them:

* **experts** (:func:`train_expert`): SGD without momentum or weight decay at ``lr_teacher``, batches of 256
  real samples, the parameters recorded after every epoch (epoch 0 is the starting point);
* **evaluation / transitions** (:func:`train_on`): SGD momentum 0.9, weight decay 5e-4, the learned learning rate,
  ×0.1 at half of the run; optionally continuing from given weights *and* optimizer state (progressive training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nessa.distill.net import ConvNetSpec, forward, init_params

__all__ = ["TrainState", "accuracy", "train_expert", "train_on"]

Tick = Callable[[], None]


def _noop() -> None:
    return None


def _epoch_batches(n: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    return [order[i : i + batch] for i in range(0, n, batch)]


def train_expert(
    spec: ConvNetSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    start: torch.Tensor,
    epochs: int,
    lr: float,
    generator: torch.Generator,
    batch_size: int = 256,
    tick: Tick = _noop,
) -> list[torch.Tensor]:
    """Train from ``start`` on real data and return ``epochs + 1`` flat checkpoints (the first is ``start``)."""
    flat = start.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([flat], lr=lr)
    out = [flat.detach().clone()]
    for _ in range(epochs):
        for idx in _epoch_batches(len(y), batch_size, generator):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(spec, flat, x[idx]), y[idx]).backward()
            opt.step()
        out.append(flat.detach().clone())
        tick()
    return out


@dataclass
class TrainState:
    """Weights and SGD momentum buffers carried from one training phase to the next."""

    flat: torch.Tensor
    momentum: torch.Tensor | None = None


def train_on(
    spec: ConvNetSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    generator: torch.Generator,
    state: TrainState | None = None,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    tick: Tick = _noop,
) -> TrainState:
    """Train (from ``state``, else a fresh init) for ``epochs`` epochs; lr ×0.1 from epoch ``epochs // 2 + 1``."""
    start = state.flat if state is not None else init_params(spec, generator, x.device)
    flat = start.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([flat], lr=lr, momentum=momentum, weight_decay=weight_decay)
    if state is not None and state.momentum is not None:
        opt.state[flat]["momentum_buffer"] = state.momentum.clone()
    half = epochs // 2 + 1
    for epoch in range(epochs):
        if epoch == half:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        for idx in _epoch_batches(len(y), batch_size, generator):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(spec, flat, x[idx]), y[idx]).backward()
            opt.step()
        tick()
    buf: Any = opt.state[flat].get("momentum_buffer")
    return TrainState(flat.detach().clone(), None if buf is None else buf.detach().clone())


@torch.no_grad()
def accuracy(spec: ConvNetSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    """Fraction of ``x`` classified as ``y``."""
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((forward(spec, flat, x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(y), 1)
