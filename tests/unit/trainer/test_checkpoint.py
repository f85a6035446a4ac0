"""Tests of nessa.trainer.checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nessa.errors import DataCorruptionError
from nessa.trainer.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from nessa.trainer.models import cnn1d


def test_checkpoint_round_trip_with_model_optimizer_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cnn1d()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 40)).sum().backward()
    opt.step()
    save_checkpoint(
        tmp_path,
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": capture_rng_state(),
            "history": [{"epoch": 0, "acc": 0.5, "none": None}],
            "proxy": torch.frombuffer(bytearray(b"proxy-bytes"), dtype=torch.uint8),
        },
    )
    expected = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None
    restore_rng_state(ckpt["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # noqa: NPY002
    other = cnn1d()
    other.load_state_dict(ckpt["model"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optimizer"])
    assert ckpt["history"] == [{"epoch": 0, "acc": 0.5, "none": None}]
    assert bytes(ckpt["proxy"].numpy().tobytes()) == b"proxy-bytes"


def test_checkpoint_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    for i in range(3):
        save_checkpoint(tmp_path, {"i": i})
    assert load_checkpoint(tmp_path) == {"i": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_no_checkpoint_is_none_and_a_torn_one_is_a_clear_error(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "nothing-here") is None
    save_checkpoint(tmp_path, {"x": torch.arange(1000)})
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataCorruptionError, match="delete it"):
        load_checkpoint(tmp_path)
