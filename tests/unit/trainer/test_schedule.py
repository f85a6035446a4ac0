"""Tests of nessa.trainer.schedule."""

from __future__ import annotations

import itertools

import pytest

from nessa.errors import InvalidArgumentError
from nessa.trainer.schedule import LRSchedule


def test_schedule_warmup_then_cosine_to_zero() -> None:
    s = LRSchedule(base_lr=0.1, epochs=10, warmup_epochs=2, warmup_start_factor=0.1)
    assert s.lr_at(0) == pytest.approx(0.01)
    assert s.lr_at(1) == pytest.approx(0.055)
    assert s.lr_at(2) == pytest.approx(0.1)
    assert s.lr_at(6) == pytest.approx(0.05)
    assert s.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    lrs = [s.lr_at(p / 10) for p in range(20, 101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs)), "cosine part must not increase"


def test_schedule_is_the_same_whatever_the_epoch_size() -> None:
    """A 10 % epoch (few steps) and a full epoch (many) go through the same learning rates by progress."""
    s = LRSchedule(base_lr=0.2, epochs=5, warmup_epochs=1)
    full = [s.lr_for_step(3, i, 300) for i in range(300)]
    small = [s.lr_for_step(3, i, 30) for i in range(30)]
    assert small == [full[10 * i] for i in range(30)]
    assert s.lr_for_step(4, 29, 30) < s.lr_for_step(0, 29, 30)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_lr": 0.0, "epochs": 3},
        {"base_lr": 0.1, "epochs": 0},
        {"base_lr": 0.1, "epochs": 3, "warmup_epochs": 4},
        {"base_lr": float("nan"), "epochs": 3},
    ],
)
def test_schedule_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(InvalidArgumentError):
        LRSchedule(**kwargs)


def test_schedule_rejects_a_step_outside_the_epoch() -> None:
    with pytest.raises(InvalidArgumentError, match="outside"):
        LRSchedule(0.1, 3).lr_for_step(0, 5, 5)
