"""Shared pieces of the trainer tests: an MNIST-1D daemon on port 0, run configs, the ``nessa train`` command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.server import StorageDaemon
from nessa.store import ingest
from nessa.trainer.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 3000  # 2400 train / 600 test


def mnist_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageDaemon]:
    """A daemon on port 0 serving MNIST-1D ``m`` (2,400 samples) and ``m-test`` (600); for a module fixture."""
    root = tmp_path_factory.mktemp("trainer-data")
    ingest("mnist1d", root / "m", num_samples=NUM_SAMPLES, test_fraction=0.2)
    d = StorageDaemon(
        DaemonConfig(data_dir=root, host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0.0)
    ).start()
    try:
        yield d
    finally:
        d.stop(grace=0.5, drain=0)


def config_for(daemon: StorageDaemon, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "target": daemon.address,
        "dataset": "m",
        "test_dataset": "m-test",
        "model": "cnn1d",
        "epochs": 3,
        "batch_size": 64,
        "progress": False,
        "torch_threads": 1,
    }
    base.update(kw)
    return TrainConfig(**base)


def train_cmd(target: str, ckpt: Path, report: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nessa.cli",
        "train",
        "--target",
        target,
        "--dataset",
        "m",
        "--test-dataset",
        "m-test",
        "--method",
        "craig",
        "--fraction",
        "0.5",
        "--epochs",
        "5",
        "--batch-size",
        "64",
        "--seed",
        "3",
        "--torch-threads",
        "1",
        "--checkpoint-dir",
        str(ckpt),
        "--checkpoint-every-steps",
        "1",
        "--no-progress",
        "--report",
        str(report),
    ]
