"""The trainer's pieces that need no daemon: schedule, checkpoints, report, pipeline threads, decoding, CREST drift."""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nessa.client import Batch, DatasetInfo
from nessa.errors import DataCorruptionError, FailedPreconditionError, InvalidArgumentError
from nessa.trainer.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from nessa.trainer.data import SampleDecoder, rebatch
from nessa.trainer.drift import DriftMonitor
from nessa.trainer.models import cnn1d
from nessa.trainer.pipeline import BatchPrefetcher, SelectionJob, SelectionPipeline
from nessa.trainer.report import RunResult, build_report, format_table, plot_report, time_to_accuracy, write_report
from nessa.trainer.schedule import LRSchedule

# -- schedule ------------------------------------------------------------------------------------------------------


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


# -- checkpoints ---------------------------------------------------------------------------------------------------


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


# -- report --------------------------------------------------------------------------------------------------------


def _run(method: str, fraction: float, accs: list[float], epoch_seconds: float, epoch_bytes: int) -> RunResult:
    epochs = [
        {
            "epoch": i,
            "test_accuracy": a,
            "wall_seconds": epoch_seconds * (i + 1),
            "bytes_to_trainer_total": epoch_bytes * (i + 1),
            "bytes_to_storage_total": 100 * (i + 1),
        }
        for i, a in enumerate(accs)
    ]
    return RunResult(
        method=method,
        fraction=fraction,
        epochs=epochs,
        wall_seconds=epoch_seconds * len(accs),
        bytes_to_trainer=epoch_bytes * len(accs),
        bytes_to_storage=100 * len(accs),
        data_wait_seconds=0.1 * len(accs),
    )


def test_report_times_against_full_minus_one_point_and_says_who_wins(tmp_path: Path) -> None:
    results = [
        _run("full", 1.0, [0.80, 0.90, 0.95], 10.0, 1000),
        _run("random", 0.1, [0.60, 0.85, 0.93], 1.0, 100),
        _run("craig", 0.1, [0.70, 0.94, 0.92], 2.0, 100),
    ]
    report = build_report(results, config={"seed": 0})
    assert report["target_accuracy"] == pytest.approx(0.94)
    by = {m["method"]: m for m in report["methods"]}
    assert by["full"]["time_to_target_seconds"] == 30.0
    assert by["random"]["time_to_target_seconds"] is None
    assert by["craig"]["time_to_target_seconds"] == 4.0
    assert by["craig"]["time_to_target_speedup_vs_full"] == pytest.approx(7.5)
    assert by["random"]["speedup_vs_full"] == pytest.approx(10.0)
    assert by["craig"]["final_accuracy"] == 0.92 and by["craig"]["best_accuracy"] == 0.94
    assert any("craig does NOT beat random" in f for f in report["findings"])
    assert any("random did not reach" in f for f in report["findings"])
    assert any("craig reached 94.00% after 4.0 s, 7.50x faster than full data" in f for f in report["findings"])
    slow = build_report([results[0], _run("crest", 0.1, [0.5, 0.6, 0.94], 20.0, 100)])
    assert any("crest reached 94.00% after 60.0 s, 2.00x slower than full data" in f for f in slow["findings"])
    for key in (
        "method",
        "fraction",
        "final_accuracy",
        "best_accuracy",
        "wall_seconds",
        "bytes_to_trainer",
        "bytes_to_storage",
        "data_wait_seconds",
        "time_to_target_seconds",
        "epochs",
    ):
        assert key in by["craig"]
    table = format_table(report)
    assert "not reached" in table and "craig" in table and "94.00%" in table
    path = write_report(report, tmp_path)
    assert json.loads(path.read_text())["methods"][2]["method"] == "craig"
    png = plot_report(report, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_time_to_accuracy_is_the_first_epoch_reaching_it() -> None:
    epochs = [{"test_accuracy": a, "wall_seconds": float(i)} for i, a in enumerate([0.1, 0.5, 0.4, 0.6])]
    assert time_to_accuracy(epochs, 0.45) == 1.0
    assert time_to_accuracy(epochs, 0.7) is None


# -- pipeline threads ----------------------------------------------------------------------------------------------


def test_selection_pipeline_runs_jobs_in_order_and_measures_the_wait() -> None:
    order: list[int] = []

    def fetch(job: SelectionJob) -> str:
        time.sleep(0.05)
        order.append(job.epoch)
        return f"selection-{job.epoch}-v{job.proxy_version}"

    with SelectionPipeline(fetch) as pipe:
        pipe.submit(SelectionJob(epoch=0, proxy=b"p", proxy_version=0))
        pipe.submit(SelectionJob(epoch=1, proxy=b"p", proxy_version=0, push=False))
        assert [j.epoch for j in pipe.pending_jobs()] == [0, 1]
        value, waited = pipe.result(1)
        assert value == "selection-1-v0" and waited > 0.0
        assert order == [0, 1]
        assert pipe.result(0)[0] == "selection-0-v0"
        with pytest.raises(FailedPreconditionError, match="no selection was requested"):
            pipe.result(2)
        with pytest.raises(FailedPreconditionError, match="already requested"):
            pipe.submit(SelectionJob(epoch=3))
            pipe.submit(SelectionJob(epoch=3))


def test_selection_pipeline_hands_errors_to_the_training_thread() -> None:
    def fetch(job: SelectionJob) -> str:
        raise InvalidArgumentError(f"bad method for epoch {job.epoch}")

    with SelectionPipeline(fetch) as pipe:
        pipe.submit(SelectionJob(epoch=0))
        with pytest.raises(InvalidArgumentError, match="epoch 0"):
            pipe.result(0)


def test_prefetcher_keeps_order_propagates_errors_and_stops_its_thread() -> None:
    with BatchPrefetcher(iter(range(10)), convert=lambda v: v * 2, depth=2) as pre:
        assert list(pre) == [2 * i for i in range(10)]
        assert len(pre.waits) == 11

    def failing():
        yield 1
        raise InvalidArgumentError("stream broke")

    pre = BatchPrefetcher(failing(), convert=lambda v: v)
    assert next(pre) == 1
    with pytest.raises(InvalidArgumentError, match="stream broke"):
        next(pre)
    pre.close()

    endless = BatchPrefetcher(iter(int, 1), convert=lambda v: v, depth=1)
    next(endless)
    endless.close(timeout=5)
    assert not endless._thread.is_alive()


# -- decoding and batches ------------------------------------------------------------------------------------------


def _info(shape: tuple[int, ...], dtype: str, codec: str = "raw", classes: int = 10) -> DatasetInfo:
    return DatasetInfo(
        name="d",
        num_samples=10,
        num_classes=classes,
        class_names=(),
        class_counts=(),
        codec=codec,
        sample_shape=shape,
        dtype=dtype,
        total_bytes=0,
        num_shards=1,
        proxy_version=None,
    )


def test_decoder_matches_the_proxy_normalisation_and_layouts() -> None:
    x = np.arange(2 * 40, dtype=np.float32).reshape(2, 40)
    dec = SampleDecoder(_info((40,), "float32"), "cnn1d")
    out = dec.decode([x[0].tobytes(), x[1].tobytes()])
    assert torch.equal(out, torch.from_numpy(x))
    assert dec.model_kwargs() == {"length": 40, "num_classes": 10}
    assert dec.normalization.scale == 1.0

    img = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    dec = SampleDecoder(_info((8, 8, 3), "uint8"), "resnet20")
    out = dec.decode([img[0].tobytes(), img[1].tobytes()])
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out, torch.from_numpy(img.transpose(0, 3, 1, 2).astype(np.float32)) / 255.0)
    assert dec.model_kwargs() == {"num_classes": 10, "in_channels": 3}
    assert dec.normalization.scale == pytest.approx(1 / 255)

    dec = SampleDecoder(_info((3, 4, 4), "uint8"), "mlp")
    assert dec.decode([bytes(48)]).shape == (1, 48)
    with pytest.raises(InvalidArgumentError, match="re-ingest"):
        dec.decode([bytes(47)])


@pytest.mark.parametrize(
    ("info", "model", "match"),
    [
        (_info((32, 32, 3), "uint8", codec="png"), "resnet20", "raw arrays only"),
        (_info((40,), "float64"), "cnn1d", "float32 or uint8"),
        (_info((3, 8, 8), "float32"), "cnn1d", "1-D signals"),
        (_info((40,), "float32"), "resnet20", "image samples"),
    ],
)
def test_decoder_rejects_what_it_cannot_feed_the_model(info: DatasetInfo, model: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        SampleDecoder(info, model)


def test_rebatch_regroups_byte_bounded_messages_into_exact_batches() -> None:
    dec = SampleDecoder(_info((2,), "float32"), "mlp")
    rng = np.random.default_rng(1)
    msgs, seen = [], 0
    for size in (3, 1, 7, 2, 5):  # 18 samples in messages of uneven size
        idx = np.arange(seen, seen + size, dtype=np.int64)
        seen += size
        msgs.append(
            Batch(
                indices=idx,
                labels=idx % 3,
                weights=rng.random(size).astype(np.float32),
                samples=[np.array([i, -i], dtype=np.float32).tobytes() for i in idx],
                cursor="",
                position=seen,
                total=18,
            )
        )
    batches = list(rebatch(msgs, 4, dec))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]
    assert np.array_equal(np.concatenate([b.indices for b in batches]), np.arange(18))
    assert torch.equal(torch.cat([b.w for b in batches]), torch.from_numpy(np.concatenate([m.weights for m in msgs])))
    assert torch.equal(batches[1].x[:, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert sum(b.payload_bytes for b in batches) == 18 * 8


# -- CREST drift ---------------------------------------------------------------------------------------------------


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


def test_pipeline_threads_do_not_leak() -> None:
    before = threading.active_count()
    for _ in range(3):
        with SelectionPipeline(lambda job: job.epoch) as pipe:
            pipe.submit(SelectionJob(epoch=0))
            pipe.result(0)
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before  # every worker thread ends once closed


# -- device --------------------------------------------------------------------------------------------------------


def test_device_choice_is_explicit_and_fails_clearly() -> None:
    from nessa.trainer.config import resolve_device

    has_cuda = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if has_cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if has_cuda:
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(FailedPreconditionError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(InvalidArgumentError, match="unknown device"):
        resolve_device("tpu")
