"""Evaluation as the PDD paper does it: fresh ConvNet-1Ds trained on the synthetic stages, tested on real data.

Three ways to train on P stages (PDD Table 3):

* ``progressive``: train on S_1, then on S_1 ∪ S_2, …, each phase with that stage's learned lr, carrying weights
  and optimizer state (``evaluate_mtt.py``);
* ``union``: train once on S_1 ∪ … ∪ S_P with the last stage's lr;
* ``sequential``: train on S_1, then S_2 alone, …, carrying weights and optimizer state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nessa.distill.net import ConvNetSpec
from nessa.distill.train import TrainState, accuracy, train_on
from nessa.errors import InvalidArgumentError

__all__ = ["SCHEDULES", "train_stages"]

#: How to train on several stages.
SCHEDULES = ("progressive", "union", "sequential")


def train_stages(
    spec: ConvNetSpec,
    stages: Sequence[tuple[np.ndarray, np.ndarray, float]],
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int,
    seed: int,
    schedule: str = "progressive",
) -> list[float]:
    """Train a fresh network on ``stages`` ((x, y, lr) each) and return the test accuracy after every phase.

    Args:
        spec: the network to train.
        stages: the stages in order.
        x_test: real test samples.
        y_test: their labels.
        epochs: epochs per phase (SGD momentum 0.9, weight decay 5e-4, lr ×0.1 at half of each phase).
        seed: network init and batch order.
        schedule: one of :data:`SCHEDULES`.
    """
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not stages:
        raise InvalidArgumentError("no stages to train on")
    gen = torch.Generator().manual_seed(int(seed))
    xt, yt = torch.as_tensor(np.asarray(x_test, np.float32)), torch.as_tensor(np.asarray(y_test, np.int64))
    xs = [torch.as_tensor(np.asarray(s[0], np.float32)) for s in stages]
    ys = [torch.as_tensor(np.asarray(s[1], np.int64)) for s in stages]
    if schedule == "union":
        state = train_on(spec, torch.cat(xs), torch.cat(ys), lr=float(stages[-1][2]), epochs=epochs, generator=gen)
        return [accuracy(spec, state.flat, xt, yt)]
    out: list[float] = []
    state_: TrainState | None = None
    for i, (_, _, lr) in enumerate(stages):
        if schedule == "progressive":
            x, y = torch.cat(xs[: i + 1]), torch.cat(ys[: i + 1])
        else:
            x, y = xs[i], ys[i]
        state_ = train_on(spec, x, y, lr=float(lr), epochs=epochs, generator=gen, state=state_)
        out.append(accuracy(spec, state_.flat, xt, yt))
    return out
