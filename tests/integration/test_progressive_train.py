"""``--plan progressive`` through a real daemon: the stages' unions streamed in order, each with its learned lr."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nessa.distill import DistillOptions, DistillResult, Stage
from nessa.distill.store import load_arrays, write_distilled
from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.server import StorageDaemon
from nessa.store import ingest
from nessa.trainer.config import TrainConfig
from nessa.trainer.loop import train


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageDaemon]:
    root = tmp_path_factory.mktemp("progressive")
    ingest("mnist1d", root / "m", num_samples=1000, test_fraction=0.2)
    # Two stages of 2 real samples per class with made-up lrs: this tests the plan, not the distillation.
    x, y, _ = load_arrays(root / "m")
    pick = [np.concatenate([np.nonzero(y == c)[0][2 * i : 2 * i + 2] for c in range(10)]) for i in range(2)]
    stages = [Stage(x[p], y[p], lr) for p, lr in zip(pick, (0.05, 0.02), strict=True)]
    write_distilled(DistillResult("pdd", 4, stages, DistillOptions(), 0), root / "m-pdd", distilled_from="m")
    d = StorageDaemon(
        DaemonConfig(data_dir=root, host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0.0, warmup=False)
    )
    d.start()
    try:
        yield d
    finally:
        d.stop(grace=0.5, drain=0)


def _config(daemon: StorageDaemon, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "target": daemon.address, "dataset": "m-pdd", "test_dataset": "m-test", "model": "cnn1d", "epochs": 6,
        "batch_size": 32, "progress": False, "torch_threads": 1, "plan": "progressive",
    }  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_progressive_streams_each_union_with_its_lr(daemon: StorageDaemon) -> None:
    info_lrs = [s["learned_lr"] for s in __import__("nessa.client", fromlist=["x"]).StorageClient(
        daemon.address).describe("m-pdd").source["stages"]]  # fmt: skip
    result = train(_config(daemon))
    epochs = result.epochs
    assert [e["stage"] for e in epochs] == [1, 1, 1, 2, 2, 2]
    assert [e["samples"] for e in epochs] == [20, 20, 20, 40, 40, 40]  # the union of stages 1..i
    assert [e["stage_end"] for e in epochs] == [False, False, True, False, False, True]
    # stage i's learned lr, x0.1 from epoch E/2 + 1 of the phase (E = 3: the third epoch)
    want = [info_lrs[0], info_lrs[0], 0.1 * info_lrs[0], info_lrs[1], info_lrs[1], 0.1 * info_lrs[1]]
    np.testing.assert_allclose([e["lr_end"] for e in epochs], want, rtol=1e-6)
    assert result.bytes_to_storage < 10_000  # requests only: no proxy was pushed
    assert result.options["pushed_proxy_versions"] == []
    assert all(0 <= e["test_accuracy"] <= 1 for e in epochs)
    payload = sum(e["payload_bytes"] for e in epochs)
    assert payload == (3 * 20 + 3 * 40) * 40 * 4


def test_progressive_refuses_what_it_cannot_train(daemon: StorageDaemon) -> None:
    with pytest.raises(InvalidArgumentError, match="does not split over the 2 stages"):
        train(_config(daemon, epochs=5))
    with pytest.raises(FailedPreconditionError, match="not a distilled group"):
        train(_config(daemon, dataset="m"))
    with pytest.raises(InvalidArgumentError, match="drop --method"):
        train(_config(daemon, method="random", fraction=0.5))


def test_cli_train_progressive(daemon: StorageDaemon, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nessa.cli", "train", "--target", daemon.address, "--dataset", "m-pdd",
         "--test-dataset", "m-test", "--plan", "progressive", "--epochs", "2", "--batch-size", "32",
         "--torch-threads", "1", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "progressive: stage 2/2 done (40 samples" in out.stderr
