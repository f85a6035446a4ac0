"""The trainer end to end against a real daemon (in-process, port 0) over real LMDB datasets and PoCL kernels."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from nessa.client import SelectionResult, StorageClient
from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.server import StorageDaemon
from nessa.store import ingest
from nessa.trainer.checkpoint import load_checkpoint
from nessa.trainer.config import TrainConfig, method_needs_proxy
from nessa.trainer.data import TrainBatch
from nessa.trainer.loop import Trainer, _EpochState, train
from nessa.trainer.pipeline import SelectionJob

ROOT = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 3000  # 2400 train / 600 test


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trainer-data")
    ingest("mnist1d", root / "m", num_samples=NUM_SAMPLES, test_fraction=0.2)
    return root


@pytest.fixture(scope="module")
def daemon(data_dir: Path) -> Iterator[StorageDaemon]:
    d = StorageDaemon(
        DaemonConfig(data_dir=data_dir, host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0.0)
    ).start()
    try:
        yield d
    finally:
        d.stop(grace=0.5, drain=0)


def _config(daemon: StorageDaemon, **kw: Any) -> TrainConfig:
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


class RecordingTrainer(Trainer):
    """The real trainer, also keeping what it trained on and the selections it got (for the assertions)."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config, echo=lambda _s: None)
        self.batches: dict[int, list[TrainBatch]] = {}
        self.results: dict[int, SelectionResult] = {}

    def _fetch(self, job: SelectionJob) -> SelectionResult:
        sel = super()._fetch(job)
        self.results[job.epoch] = sel
        return sel

    def _train_step(self, batch: TrainBatch, state: _EpochState, steps_in_epoch: int) -> None:
        self.batches.setdefault(state.epoch, []).append(batch)
        super()._train_step(batch, state, steps_in_epoch)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_pipelined_craig_streams_exactly_the_selection_and_trains_on_its_weights(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(_config(daemon, method="craig", fraction=0.2, epochs=3))
    kinds = ("samples", "metadata")
    before = {
        "bytes": sum(
            _metric("nessa_trainer_bytes_received_total", dataset=d, kind=k) for k in kinds for d in ("m", "m-test")
        ),
        "samples": _metric("nessa_trainer_samples_total", dataset="m"),
        "epochs": _metric("nessa_trainer_epoch_duration_seconds_count"),
        "waits": _metric("nessa_trainer_data_wait_seconds_count"),
    }
    result = trainer.run()
    assert [e["epoch"] for e in result.epochs] == [0, 1, 2]
    n_train = trainer.info.num_samples
    for rec in result.epochs:
        e = rec["epoch"]
        sel = trainer.results[e]
        # every selected sample, once, with its selection weight; bytes received equal the selection's bytes
        trained = np.concatenate([b.indices for b in trainer.batches[e]])
        assert sorted(trained.tolist()) == sorted(sel.indices.tolist())
        weight_of = dict(zip(sel.indices.tolist(), sel.weights.tolist(), strict=True))
        used = torch.cat([b.w for b in trainer.batches[e]]).numpy()
        assert np.allclose(used, [weight_of[i] for i in trained.tolist()])
        assert rec["payload_bytes"] == rec["selected_bytes"] == sel.selected_bytes
        assert rec["payload_bytes"] <= rec["bytes_to_trainer"] <= rec["payload_bytes"] * 1.25 + 10_000
        assert rec["subset_size"] == len(sel) == rec["samples"]
        assert abs(len(sel) - 0.2 * n_train) <= 10
        # data wait is measured and includes the wait for the selection
        assert rec["data_wait_seconds"] >= rec["selection_wait_seconds"] >= 0.0
        assert 0.0 < rec["epoch_seconds"] and rec["data_wait_seconds"] <= rec["epoch_seconds"]
        # CRAIG's weights are cluster sizes, not all ones, and the loss that trained used them
        assert not np.allclose(sel.weights, 1.0)
        assert rec["train_weighted_loss"] != pytest.approx(rec["train_loss"], rel=1e-3)
    # pipelined: epoch e's selection used the proxy of the end of epoch e-1 (epochs 0 and 1 the initial one)
    assert [trainer.results[e].proxy_version for e in range(3)] == [0, 0, 1]
    assert result.options["pushed_proxy_versions"] == [0, 1]
    assert StorageClient(daemon.address).describe("m").proxy_version == 1
    assert result.bytes_to_storage > 0 and result.final_accuracy > 0.15
    # the test set was streamed once for the three evaluations (then cached), and is not counted as training bytes
    test_bytes = StorageClient(daemon.address).describe("m-test").total_bytes
    assert test_bytes <= result.eval_bytes <= test_bytes * 1.25 + 10_000
    # the trainer's Prometheus metrics saw the same run
    moved = (
        sum(_metric("nessa_trainer_bytes_received_total", dataset=d, kind=k) for k in kinds for d in ("m", "m-test"))
        - before["bytes"]
    )
    assert result.setup_bytes > 0
    assert moved == result.bytes_to_trainer + result.eval_bytes + result.setup_bytes
    assert _metric("nessa_trainer_samples_total", dataset="m") - before["samples"] == sum(
        r["samples"] for r in result.epochs
    )
    assert _metric("nessa_trainer_epoch_duration_seconds_count") - before["epochs"] == 3
    assert _metric("nessa_trainer_data_wait_seconds_count") - before["waits"] >= sum(r["steps"] for r in result.epochs)
    assert _metric("nessa_trainer_accuracy_ratio", split="test") == pytest.approx(result.final_accuracy)
    assert _metric("nessa_trainer_loss", split="train") == pytest.approx(result.epochs[-1]["train_loss"])


def test_strict_order_uses_the_proxy_pushed_right_before(daemon: StorageDaemon) -> None:
    trainer = RecordingTrainer(_config(daemon, method="craig", fraction=0.1, epochs=2, pipeline=False, seed=7))
    result = trainer.run()
    assert [trainer.results[e].proxy_version for e in range(2)] == [0, 1]
    assert result.options["pushed_proxy_versions"] == [0, 1]
    assert [r["selection_proxy_version"] for r in result.epochs] == [0, 1]
    # without pipelining the trainer waits for each selection (push + Select), and counts it as data wait
    assert not any(s["cached"] for s in result.options["selections"])
    for rec in result.epochs:
        assert rec["selection_seconds"] > 0
        assert rec["data_wait_seconds"] >= rec["selection_wait_seconds"] >= 0.9 * rec["selection_seconds"]


def test_full_streams_every_sample_and_random_a_tenth_of_the_bytes(daemon: StorageDaemon) -> None:
    full = train(_config(daemon, method="full", epochs=1))
    rnd = train(_config(daemon, method="random", fraction=0.1, epochs=1))
    info = StorageClient(daemon.address).describe("m")
    assert full.epochs[0]["payload_bytes"] == info.total_bytes
    assert full.epochs[0]["subset_size"] == info.num_samples
    assert full.bytes_to_storage == 0 and rnd.bytes_to_storage == 0  # no proxy for methods that need none
    ratio = rnd.bytes_to_trainer / full.bytes_to_trainer
    assert 0.09 <= ratio <= 0.11, ratio
    bal = RecordingTrainer(_config(daemon, method="balanced", fraction=0.1, epochs=1))
    bal.run()
    labels = torch.cat([b.y for b in bal.batches[0]]).numpy()
    counts = np.bincount(labels, minlength=info.num_classes)
    assert counts.sum() == len(bal.results[0]) and counts.max() - counts.min() <= 1  # class-balanced, as selected


def test_metrics_port_serves_the_trainer_metrics_while_it_trains(daemon: StorageDaemon) -> None:
    scraped: list[str] = []

    def at_epoch_end(_line: str) -> None:  # called after each epoch, while the run (and its server) is live
        port = trainer._metrics_server.server_port
        scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())

    trainer = Trainer(_config(daemon, method="random", epochs=1, metrics_port=0), echo=at_epoch_end)
    result = trainer.run()
    assert len(scraped) == 1
    body = scraped[0]
    for name in (
        "nessa_trainer_epoch_duration_seconds_count",
        "nessa_trainer_data_wait_seconds_count",
        'nessa_trainer_bytes_received_total{dataset="m",kind="samples"}',
        'nessa_trainer_samples_total{dataset="m"}',
        'nessa_trainer_loss{split="test"}',
        'nessa_trainer_accuracy_ratio{split="test"}',
    ):
        assert name in body, name
    assert f'nessa_trainer_accuracy_ratio{{split="test"}} {result.final_accuracy}' in body


def test_weights_scale_the_gradient(daemon: StorageDaemon) -> None:
    """Loss = mean(w * CE): zero weights leave the model alone, doubled weights double the step."""
    trainer = Trainer(_config(daemon, method="random", momentum=0.0, weight_decay=0.0), echo=lambda _s: None)
    trainer._setup()
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x = torch.randn(16, 40)
    y = torch.randint(0, 10, (16,))

    def step(w: torch.Tensor) -> torch.Tensor:
        trainer.model.load_state_dict(start)
        batch = TrainBatch(x=x, y=y, w=w, indices=np.arange(16), payload_bytes=0)
        trainer._train_step(batch, _EpochState(epoch=1), steps_in_epoch=10)
        return trainer.model.fc.weight.detach().clone() - start["fc.weight"]

    assert torch.count_nonzero(step(torch.zeros(16))) == 0
    one, two = step(torch.ones(16)), step(torch.full((16,), 2.0))
    assert torch.count_nonzero(one) > 0
    assert torch.allclose(two, 2 * one, rtol=1e-4, atol=1e-7)


def test_crest_reselects_on_its_drift_trigger(daemon: StorageDaemon) -> None:
    # τ so large the quadratic model is never "wrong": the first selection is trained on (cycled) to the end
    never = train(_config(daemon, method="crest", fraction=0.2, epochs=2, crest_tau=1e9))
    assert len(never.options["selections"]) == 1
    assert [r["reselections"] for r in never.epochs] == [1, 0] and all(r["drift_checks"] >= 1 for r in never.epochs)
    result = train(_config(daemon, method="crest", fraction=0.2, epochs=2, crest_tau=0.01))
    steps = math.ceil(0.2 * 2400 / 64)
    assert [r["steps"] for r in result.epochs] == [steps, steps]
    sels = result.options["selections"]
    # a small τ: the loss drifts away from the quadratic model and the trigger asks for new coresets
    assert sum(r["reselections"] for r in result.epochs) == len(sels) >= 2
    assert all(r["mean_rho"] is not None and r["mean_rho"] >= 0 for r in result.epochs)
    assert all(r["drift_checks"] >= 1 for r in result.epochs)
    # each selection used the proxy pushed just before it (versioned by the global step)
    assert [s["proxy_version"] for s in sels] == result.options["pushed_proxy_versions"]
    assert sels[0]["proxy_version"] == 0 and all(s["size"] % 64 == 0 for s in sels)
    assert result.final_accuracy > 0.15


def test_bad_settings_are_clear_errors(daemon: StorageDaemon, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        method_needs_proxy("magic")
    assert not method_needs_proxy("random") and method_needs_proxy("craig")
    with pytest.raises(InvalidArgumentError, match="fraction"):
        _config(daemon, method="random", fraction=1.5)
    with pytest.raises(InvalidArgumentError, match="unknown model"):
        _config(daemon, model="vgg")
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        train(_config(daemon, method="craig", epochs=1, options={"nonsense": 1}))
    ckpt = tmp_path / "ckpt"
    train(_config(daemon, method="random", epochs=1, checkpoint_dir=str(ckpt)))
    with pytest.raises(FailedPreconditionError, match="another run"):
        train(_config(daemon, method="random", epochs=1, fraction=0.3, checkpoint_dir=str(ckpt)))


def _train_cmd(target: str, ckpt: Path, report: Path) -> list[str]:
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


def test_kill_9_mid_epoch_and_resume_matches_an_uninterrupted_run(daemon: StorageDaemon, tmp_path: Path) -> None:
    ckpt, report = tmp_path / "ckpt", tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _train_cmd(daemon.address, ckpt, report), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    killed_at: tuple[int, int] | None = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = load_checkpoint(ckpt) if (ckpt / "checkpoint.pt").exists() else None
            if state is not None and state["next_epoch"] >= 2 and state["current"] is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                killed_at = (state["next_epoch"], state["current"]["position"])
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=30)
    assert killed_at is not None, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not report.exists()
    resumed = subprocess.run(
        _train_cmd(daemon.address, ckpt, report), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from epoch" in resumed.stderr
    result = json.loads(report.read_text())
    assert [e["epoch"] for e in result["epochs"]] == [0, 1, 2, 3, 4]
    # the interrupted epoch still trained on each of its selected samples (the stream restarted after them)
    assert all(e["samples"] == e["subset_size"] for e in result["epochs"])
    uninterrupted = train(_config(daemon, method="craig", fraction=0.5, epochs=5, batch_size=64, seed=3, pipeline=True))
    assert abs(result["final_accuracy"] - uninterrupted.final_accuracy) <= 0.02, (
        result["final_accuracy"],
        uninterrupted.final_accuracy,
        killed_at,
    )
