"""What a run measures: per-epoch accumulators, bytes on the wire, the epoch record, and the Prometheus series.

Bytes are read from the client's counters (it counts what crosses the wire, on every thread) against running marks:
:meth:`Meter.take_bytes` for the records (what each epoch moved), :meth:`Meter.publish_bytes` for the metrics
(everything the daemon sent, labelled by the dataset it was about), so the metric total equals the run's
``bytes_to_trainer`` plus its ``eval_bytes`` and ``setup_bytes``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from nessa.client import StorageClient
from nessa.metrics import TRAINER_REGISTRY, TrainerMetrics
from nessa.trainer.config import TrainConfig
from nessa.trainer.report import RunResult, format_bytes

__all__ = ["EpochState", "Meter", "SelectionUsed", "metrics_run_name"]


@dataclass
class EpochState:
    """Accumulators of the epoch in progress (saved in mid-epoch checkpoints)."""

    epoch: int
    step: int = 0
    position: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0
    selection_wait: float = 0.0
    loss_sum: float = 0.0
    weighted_loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    payload_bytes: int = 0
    bytes_to_trainer: int = 0
    bytes_to_storage: int = 0
    reselections: int = 0
    checks: int = 0
    rho_sum: float = 0.0
    selected_bytes: int = 0
    subset_size: int = 0


@dataclass(frozen=True)
class SelectionUsed:
    """The facts of the selection an epoch trained on that its record keeps."""

    id: str
    proxy_version: int | None
    selection_seconds: float


class Meter:
    """Counts one run: bytes, waits, steps and the per-epoch records.

    Args:
        client: the client whose counters are read.
        dataset: the training dataset (the default label of bytes).
        test_dataset: the test dataset.
        method: the run's method (a label of every series).
        run: the run's name (a label of every series; stable across resumes).
    """

    def __init__(self, client: StorageClient, dataset: str, test_dataset: str, method: str, run: str) -> None:
        self.client = client
        self.dataset = dataset
        self.history: list[dict[str, Any]] = []
        self.totals: dict[str, float] = {"eval_seconds": 0.0, "eval_bytes": 0, "setup_bytes": 0}
        self._recv_mark = 0
        self._sent_mark = 0
        self._metric_mark: dict[str, int] = {}
        # The byte and sample series exist at zero from the first scrape.
        self.metrics = TrainerMetrics(TRAINER_REGISTRY, method=method, run=run, datasets=(dataset, test_dataset))

    def take_bytes(self) -> tuple[int, int]:
        """Bytes received and sent since the last call."""
        recv = sum(self.client.bytes_received.values())
        sent = sum(self.client.bytes_sent.values())
        d_recv, d_sent = recv - self._recv_mark, sent - self._sent_mark
        self._recv_mark, self._sent_mark = recv, sent
        return d_recv, d_sent

    def add_epoch_bytes(self, state: EpochState) -> None:
        """Add the bytes moved since the last call to ``state``."""
        recv, sent = self.take_bytes()
        state.bytes_to_trainer += recv
        state.bytes_to_storage += sent

    def publish_bytes(self, dataset: str | None = None) -> None:
        """Add the bytes received since the last call (by kind) to the trainer's bytes-received counter."""
        label = dataset or self.dataset
        for kind, value in dict(self.client.bytes_received).items():
            delta = value - self._metric_mark.get(kind, 0)
            if delta > 0:
                self.metrics.received_bytes(label, kind).inc(delta)
            self._metric_mark[kind] = value

    def wait(self, state: EpochState, seconds: float, selection: bool = False) -> None:
        """Record ``seconds`` the loop was blocked on data (on a selection when ``selection``)."""
        state.data_wait += seconds
        if selection:
            state.selection_wait += seconds
        self.metrics.data_wait.observe(seconds)

    def step(
        self, state: EpochState, n: int, loss_sum: float, weighted_loss: float, correct: int, payload: int
    ) -> None:
        """Count one optimizer step over ``n`` samples."""
        state.loss_sum += loss_sum
        state.weighted_loss_sum += weighted_loss * n
        state.correct += correct
        state.seen += n
        state.position += n
        state.step += 1
        state.payload_bytes += payload
        self.metrics.trained_samples(self.dataset).inc(n)
        self.publish_bytes()

    def end_epoch(
        self,
        state: EpochState,
        used: SelectionUsed,
        test_loss: float,
        test_accuracy: float,
        lr: float,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Close the epoch: its record (appended to :attr:`history`), the gauges; returns the record."""
        prev = self.history[-1] if self.history else None
        seen = max(state.seen, 1)
        record: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": state.loss_sum / seen,
            "train_weighted_loss": state.weighted_loss_sum / seen,
            "train_accuracy": state.correct / seen,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "samples": state.seen,
            "steps": state.step,
            "subset_size": state.subset_size or state.seen,
            "selection_id": used.id,
            "selection_proxy_version": used.proxy_version,
            "selection_seconds": used.selection_seconds,
            "selected_bytes": state.selected_bytes,
            "payload_bytes": state.payload_bytes,
            "epoch_seconds": state.seconds,
            "data_wait_seconds": state.data_wait,
            "selection_wait_seconds": state.selection_wait,
            "bytes_to_trainer": state.bytes_to_trainer,
            "bytes_to_storage": state.bytes_to_storage,
            "lr_end": lr,
            "wall_seconds": (prev["wall_seconds"] if prev else 0.0) + state.seconds,
            "bytes_to_trainer_total": (prev["bytes_to_trainer_total"] if prev else 0) + state.bytes_to_trainer,
            "bytes_to_storage_total": (prev["bytes_to_storage_total"] if prev else 0) + state.bytes_to_storage,
            **(extra or {}),
        }
        self.history.append(record)
        m = self.metrics
        m.epoch.set(state.epoch)
        m.subset_size(self.dataset).set(record["subset_size"])
        m.epoch_duration.observe(state.seconds)
        m.loss("train").set(record["train_loss"])
        m.loss("test").set(test_loss)
        m.accuracy("train").set(record["train_accuracy"])
        m.accuracy("test").set(test_accuracy)
        return record

    @staticmethod
    def epoch_line(method: str, epochs: int, record: dict[str, Any]) -> str:
        """The one-line summary of an epoch (``epoch N/E``, counted from 1, the way resume messages count)."""
        wait = record["data_wait_seconds"]
        secs = record["epoch_seconds"]
        share = f" ({100 * wait / secs:.0f} %)" if secs > 0 and math.isfinite(wait) else ""
        return (
            f"{method} epoch {record['epoch'] + 1}/{epochs}: loss {record['train_loss']:.4f}, test acc "
            f"{record['test_accuracy'] * 100:.2f} % | {record['samples']} samples in {secs:.2f} s, data wait "
            f"{wait:.2f} s{share}, {format_bytes(record['bytes_to_trainer'])} in, "
            f"{format_bytes(record['bytes_to_storage'])} out"
        )

    def result(self, cfg: TrainConfig, device: str, options: dict[str, Any]) -> RunResult:
        """The run's result: every epoch's record and the totals (``options`` adds to the run's settings)."""
        history, totals = self.history, self.totals
        return RunResult(
            method=cfg.method,
            fraction=cfg.fraction,
            epochs=list(history),
            wall_seconds=sum(r["epoch_seconds"] for r in history),
            bytes_to_trainer=sum(int(r["bytes_to_trainer"]) for r in history),
            bytes_to_storage=sum(int(r["bytes_to_storage"]) for r in history),
            data_wait_seconds=sum(r["data_wait_seconds"] for r in history),
            eval_seconds=float(totals["eval_seconds"]),
            eval_bytes=int(totals["eval_bytes"]),
            setup_bytes=int(totals["setup_bytes"]),
            model=cfg.model,
            device=device,
            options={
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "warmup_epochs": cfg.warmup_epochs,
                "seed": cfg.seed,
                "reselect_every": cfg.reselect_every,
                "pipeline": cfg.pipeline,
                "method_options": dict(cfg.options),
                **options,
            },
        )


def metrics_run_name(config: TrainConfig) -> str:
    """The ``run`` label of a run's series: its checkpoint directory's name, else its settings (stable on resume)."""
    if config.checkpoint_dir:
        return os.path.basename(os.path.normpath(config.checkpoint_dir))
    return f"{config.dataset}-{config.method}-{config.fraction:g}-s{config.seed}"
