"""Tests of nessa.trainer.drift."""

from __future__ import annotations

import math

import pytest
import torch

from nessa.errors import FailedPreconditionError
from nessa.trainer.drift import DriftMonitor
from nessa.trainer.models import cnn1d


def test_drift_monitor_tracks_small_steps_and_flags_a_jump() -> None:
    torch.manual_seed(0)
    model = cnn1d()
    x, y = torch.randn(256, 40), torch.randint(0, 10, (256,))
    mon = DriftMonitor(model, tau=0.05, seed=0)
    mon.reset(x[:128], y[:128], torch.ones(128), x[128:], y[128:])
    first = mon.check()
    assert first.rho == pytest.approx(0.0, abs=1e-6) and not first.reselect
    interval, num = mon.adapt(steps_per_epoch=30)
    assert interval >= 1 and 1 <= num <= 30
    # a tiny step along the coreset gradient: the quadratic model follows it
    grads = torch.autograd.grad(
        torch.nn.functional.cross_entropy(model.eval()(x[:128]), y[:128]), list(model.parameters())
    )
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= 1e-3 * g
    assert mon.check().rho < 0.05
    with torch.no_grad():  # a big random jump: the model no longer describes the loss
        for p in model.parameters():
            p += torch.randn_like(p)
    assert mon.check().reselect
    state = mon.state_dict()
    other = DriftMonitor(model, tau=0.05)
    other.load_state_dict(state)
    assert other.first_curvature_norm == mon.first_curvature_norm
    with pytest.raises(FailedPreconditionError, match="reset"):
        other.check()


def test_drift_monitor_leaves_the_training_mode_alone() -> None:
    model = cnn1d().train()
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    mon = DriftMonitor(model)
    mon.reset(x, y, torch.ones(64), x, y)
    mon.check()
    assert model.training
    assert math.isfinite(mon.quadratic.start_loss)  # type: ignore[union-attr]
