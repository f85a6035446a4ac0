"""The trainer: one run against a storage daemon — set up, resume, hand the epochs to a plan, report.

What to train on comes from a training plan (:mod:`nessa.trainer.plans`, chosen by name); this module supplies
what every plan uses: the model and its optimizer, the proxy push and ``Select`` (:meth:`Trainer.select`), the
data path from the daemon to the loss (:meth:`Trainer.stream`: source → rebatch → decode → prefetch, the stages
users' torch datasets are built from), the weighted SGD step (loss ``mean(w_i · CE_i)``), evaluation, checkpoints
(also mid-epoch; a resumed run continues exactly after the last batch trained) and the measurements.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nessa.client import StorageClient
from nessa.energy import EnergyMeter
from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.order import Partition, epoch_seed
from nessa.pipeline import Decode, Prefetch, Rebatch, SelectionSource
from nessa.placement import place
from nessa.records import Selection
from nessa.trainer.batches import SampleDecoder, TrainBatch
from nessa.trainer.config import TrainConfig, method_needs_proxy, resolve_device
from nessa.trainer.evaluate import TestSet, evaluate
from nessa.trainer.meter import EpochState, Meter, SelectionUsed, metrics_run_name
from nessa.trainer.models import build_model
from nessa.trainer.plans import Plan, plan_for
from nessa.trainer.progress import Console
from nessa.trainer.report import RunResult
from nessa.trainer.resume import Checkpoint
from nessa.trainer.schedule import LRSchedule
from nessa.trainer.selecting import ProxyExporter

__all__ = ["Trainer", "fit", "train"]

log = logging.getLogger("nessa.trainer")


class Trainer:
    """Runs one training job against a storage daemon.

    Args:
        config: the run.
        client: a client to use (default: one built from ``config.target``, ``token`` and ``tls``).
        echo: where per-epoch lines go (default: the ``nessa.trainer`` logger at INFO).
        energy: other processes to meter for the run beside this one (``{"daemon": EnergyMeter(pid)}``); each
            epoch record has ``energy_joules_total`` per component and the result's options ``energy``.
    """

    def __init__(
        self,
        config: TrainConfig,
        client: StorageClient | None = None,
        echo: Callable[[str], None] | None = None,
        energy: dict[str, EnergyMeter] | None = None,
        *,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.config = config
        self._user_model, self._user_optimizer, self.loss_fn = model, optimizer, loss_fn
        self.client = client or StorageClient(config.target, token=config.token, tls=config.tls)
        self._echo = echo or log.info
        self.needs_proxy = method_needs_proxy(config.method, config.options)
        self.device = resolve_device(config.device)
        run = metrics_run_name(config)
        self.meter = Meter(self.client, config.dataset, config.test_dataset, config.method, run)
        self.checkpoint = Checkpoint(config)
        self.selections: list[dict[str, Any]] = []  # every selection used: epoch, id, proxy version, timings
        self.pushed_versions: list[int] = []
        self.resumed_selection: Selection | None = None
        self.run_id = config.session or f"run-{uuid.uuid4().hex[:16]}"
        self.console = Console(self._echo, config.progress, config.progress_desc or config.method)
        self._metrics_server: Any = None
        self._labels: np.ndarray | None = None
        self.stop_requested = False  # set when the run reached stop_at_accuracy
        gpu = (self.device.index or 0) if self.device.type == "cuda" else None
        # this process's energy, and others' the caller measures for the run (e.g. the daemon's, by pid)
        self.energy: dict[str, EnergyMeter] = {"trainer": EnergyMeter(gpu_index=gpu), **(energy or {})}
        self._energy_marks: dict[str, float] = {}

    # -- setup ---------------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        self.info = self.client.describe(cfg.dataset)
        self.meter.publish_bytes(cfg.dataset)
        self.test_info = self.client.describe(cfg.test_dataset)
        self.meter.publish_bytes(cfg.test_dataset)
        self.meter.totals["setup_bytes"] += self.meter.take_bytes()[0]
        if self.test_info.sample_shape != self.info.sample_shape or self.test_info.dtype != self.info.dtype:
            raise InvalidArgumentError(
                f"test dataset {cfg.test_dataset!r} has samples {self.test_info.sample_shape} {self.test_info.dtype} "
                f"but {cfg.dataset!r} has {self.info.sample_shape} {self.info.dtype}; pair a dataset with its own "
                "test split"
            )
        if self.info.num_samples < 1 or self.test_info.num_samples < 1:
            raise FailedPreconditionError("the training and test datasets must hold samples; ingest them first")
        self.decoder = SampleDecoder(self.info, cfg.model, cfg.image_prep())
        self.placement = place(cfg.cpus)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 - seeds the legacy global generator third-party code uses
        built = (
            self._user_model if self._user_model is not None else build_model(cfg.model, **self.decoder.model_kwargs())
        )
        self.model: nn.Module = built.to(self.device)
        self.optimizer = self._user_optimizer or torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.schedule = LRSchedule(cfg.lr, cfg.epochs, cfg.warmup_epochs)
        self.export_proxy = ProxyExporter(self.model, self.decoder, cfg.quantize)
        self.plan: Plan = plan_for(cfg.method, cfg.plan)(self)
        if cfg.metrics_port is not None:
            from nessa.metrics import TRAINER_REGISTRY, start_metrics_server

            self._metrics_server = start_metrics_server(cfg.metrics_port, TRAINER_REGISTRY)
        self.meter.metrics.set_run_info(dataset=cfg.dataset, fraction=cfg.fraction, model=cfg.model)

    def labels(self) -> np.ndarray:
        """Every training sample's label (streamed once, as metadata only, and kept)."""
        if self._labels is None:
            n = self.info.num_samples
            parts = [b.labels for b in self.client.stream(np.arange(n), dataset=self.config.dataset,
                                                           batch_size=65536, metadata_only=True)]  # fmt: skip
            self._labels = np.concatenate(parts).astype(np.int64)
        return self._labels

    def epoch_samples(self) -> int:
        """Samples of one epoch's budget (``fraction`` of the training set)."""
        return math.ceil(self.config.fraction * self.info.num_samples)

    # -- services for plans --------------------------------------------------------------------------------------

    def push_proxy(self, proxy: bytes) -> None:
        """Push a serialized proxy for the training dataset."""
        ack = self.client.push_proxy(proxy, self.config.dataset)
        self.pushed_versions.append(ack.version)

    def select(
        self,
        *,
        method: str,
        seed: int,
        proxy_version: int | None,
        fraction: float | None = None,
        count: int | None = None,
        options: dict[str, Any] | None = None,
        stateless: bool = False,
        candidates: np.ndarray | None = None,
    ) -> Selection:
        """Ask the daemon for a selection of the training dataset made with proxy ``proxy_version``.

        It is made in the run's selection session (the daemon keeps the selector's state between calls) unless
        ``stateless``.
        """
        cfg = self.config
        sel = self.client.select(
            cfg.dataset,
            method,
            fraction=fraction,
            count=count,
            seed=seed,
            proxy_version=proxy_version,
            engine=cfg.engine,
            options=cfg.options if options is None else options,
            session="" if stateless else self.run_id,
            candidates=candidates,
        )
        if proxy_version is not None and sel.proxy_version != proxy_version:
            raise FailedPreconditionError(
                f"the daemon selected with proxy version {sel.proxy_version}, not the {proxy_version} pushed; "
                "another trainer is pushing proxies for the same dataset — give each run its own daemon"
            )
        return sel

    def log_selection(self, epoch: int, sel: Selection, step: int | None = None) -> None:
        """Keep a line about a selection trained on (reported in the run's options)."""
        entry: dict[str, Any] = {"epoch": epoch}
        if step is not None:
            entry["step"] = step
        entry.update(
            id=sel.id, size=len(sel), proxy_version=sel.proxy_version, cached=sel.cached, timings=sel.timings.as_dict()
        )
        self.selections.append(entry)

    def stream(
        self, sel: Selection, epoch: int, position: int = 0, batch_size: int | None = None
    ) -> Prefetch[TrainBatch]:
        """The data path for ``sel`` in epoch ``epoch``'s order, resumed after ``position`` samples.

        Batches have ``batch_size`` samples (default: the run's).
        """
        cfg = self.config
        batch = batch_size or cfg.batch_size
        source = SelectionSource(
            self.client,
            sel,
            shuffle_seed=epoch_seed(cfg.seed, epoch),
            partition=Partition(block_size=batch),
            message_size=cfg.stream_batch_size or batch,
            on_gone=lambda text: self.say(f"{cfg.method}: {text}"),
        )
        path: Prefetch[TrainBatch] = Prefetch(
            Decode(Rebatch(source, batch), self.decoder.batch), depth=cfg.prefetch_batches
        )
        path.load_state_dict({"position": position})
        return path

    def train_step(self, batch: TrainBatch, state: EpochState, steps_in_epoch: int) -> torch.Tensor:
        """One weighted SGD step (loss ``mean(w_i · CE_i)``) at the schedule's learning rate.

        Returns the batch's unweighted per-sample losses (detached; what InfoBatch scores samples by).
        """
        lr = self.schedule.lr_for_step(state.epoch, min(state.step, steps_in_epoch - 1), steps_in_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = batch.x.to(self.device, non_blocking=True)
        y = batch.y.to(self.device, non_blocking=True)
        w = (
            batch.w.to(self.device, non_blocking=True)
            if self.config.weighted
            else torch.ones_like(y, dtype=torch.float32)
        )
        self.model.train()
        logits = self.model(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        loss = (per_sample * w).mean() if self.loss_fn is None else self.loss_fn(logits, y, w)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.meter.step(
            state,
            len(batch),
            loss_sum=float(per_sample.detach().sum().item()),
            weighted_loss=float(loss.detach().item()),
            correct=int((logits.detach().argmax(1) == y).sum().item()),
            payload=batch.payload_bytes,
        )
        self.console.step()
        return per_sample.detach()

    def maybe_checkpoint_mid(self, state: EpochState, sel: Selection, plan_state: dict[str, Any], t0: float) -> float:
        """Checkpoint inside the epoch every ``checkpoint_every_steps``; returns the new timing segment's start."""
        every = self.config.checkpoint_every_steps
        if not self.config.checkpoint_dir or not every or state.step % every:
            return t0
        state.seconds += time.perf_counter() - t0
        self.meter.add_epoch_bytes(state)
        self._save(state.epoch, state, sel, plan_state)
        return time.perf_counter()

    def end_epoch(
        self,
        state: EpochState,
        sel: Selection,
        plan_state: dict[str, Any],
        keep: Selection | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Evaluate, record and checkpoint the epoch (``keep``: the selection the next epoch trains on again)."""
        cfg = self.config
        self.meter.add_epoch_bytes(state)
        self.meter.publish_bytes()
        t_eval = time.perf_counter()
        test_loss, test_acc = evaluate(self.model, self.test_set, cfg.eval_batch_size)
        self.meter.totals["eval_seconds"] += time.perf_counter() - t_eval
        used = SelectionUsed(sel.id, sel.proxy_version, sel.timings.total_seconds)
        lr = float(self.optimizer.param_groups[0]["lr"])
        record = self.meter.end_epoch(state, used, test_loss, test_acc, lr, extra)
        record["energy_joules_total"] = self._energy_now()
        self.say(Meter.epoch_line(cfg.method, cfg.epochs, record))
        if cfg.stop_at_accuracy is not None and test_acc >= cfg.stop_at_accuracy:
            self.stop_requested = True
            self.say(f"{cfg.method}: reached {test_acc * 100:.2f} % >= {cfg.stop_at_accuracy * 100:.2f} %; stopping")
        self.console.epoch(test_acc, record["train_loss"])
        self._save(state.epoch + 1, None, keep, plan_state)

    def say(self, text: str) -> None:
        """Print a line (above the progress bar when there is one)."""
        self.console.say(text)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _save(
        self,
        next_epoch: int,
        current: EpochState | None,
        sel: Selection | None,
        plan_state: dict[str, Any],
        finished: bool = False,
    ) -> None:
        self.checkpoint.save(
            model=self.model,
            optimizer=self.optimizer,
            next_epoch=next_epoch,
            current=current,
            selection=sel,
            plan_state={
                **plan_state,
                "selections": self.selections,
                "pushed_versions": self.pushed_versions,
                "run_id": self.run_id,
            },
            history=self.meter.history,
            totals=self.meter.totals,
            finished=finished,
        )

    def _restore(self) -> dict[str, Any] | None:
        ckpt = self.checkpoint.load()
        if ckpt is None:
            return None
        Checkpoint.restore(ckpt, self.model, self.optimizer)
        self.meter.history = list(ckpt.get("history", []))
        this_start = self.meter.totals["setup_bytes"]  # this start's Describe replies add to the earlier starts'
        self.meter.totals.update(ckpt.get("totals", {}))
        self.meter.totals["setup_bytes"] = int(self.meter.totals.get("setup_bytes", 0)) + this_start
        plan_state = Checkpoint.plan_state(ckpt)
        self.selections = list(plan_state.pop("selections", []))
        self.pushed_versions = list(plan_state.pop("pushed_versions", []))
        self.run_id = str(plan_state.pop("run_id", self.run_id))
        ckpt["plan"] = plan_state
        self.resumed_selection = Checkpoint.selection(ckpt)
        return ckpt

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train every epoch (resuming from the checkpoint if there is one) and return the result."""
        cfg = self.config
        self._setup()
        ckpt = self._restore()
        if ckpt is not None and ckpt.get("finished"):
            done = int(ckpt["next_epoch"])
            if done >= cfg.epochs:
                self._echo(
                    f"{cfg.method}: the checkpoint in {cfg.checkpoint_dir} is of a finished run ({done} epochs); "
                    "nothing to do (give more --epochs to extend it)"
                )
                return self._result()
            self._echo(
                f"{cfg.method}: extending the finished run in {cfg.checkpoint_dir} from {done} to {cfg.epochs} epochs "
                f"(the learning-rate schedule is now stated over {cfg.epochs})"
            )
        start = time.perf_counter()
        self.meter.take_bytes()  # the describe calls before are setup (counted there), not evaluation
        self.test_set = TestSet.load(self.client, self.test_info, cfg.model, self.device, cfg.image_prep())
        self.meter.publish_bytes(cfg.test_dataset)
        self.meter.totals["eval_bytes"] += self.meter.take_bytes()[0]
        self.meter.totals["eval_seconds"] += time.perf_counter() - start
        for name, meter in self.energy.items():
            meter.reset()
            source = "measured" if meter.read().measured else "estimated"
            self.meter.metrics.energy(name, source)  # the series exist at zero before the first epoch's increase
        start_epoch = 0 if ckpt is None else int(ckpt["next_epoch"])
        current = None if ckpt is None else Checkpoint.current(ckpt)
        if ckpt is not None:
            where = f"epoch {start_epoch + 1}/{cfg.epochs}"
            where += f", after {current.position} samples" if current is not None else ", from its start"
            self._echo(f"{cfg.method}: resuming at {where} ({cfg.checkpoint_dir})")
        per_epoch = self.plan.steps_per_epoch()
        self.console.open(cfg.epochs * per_epoch, start_epoch * per_epoch + (current.step if current else 0))
        finished = False
        try:
            self.plan.run(start_epoch, current, None if ckpt is None else ckpt["plan"])
            self._save(cfg.epochs, None, None, {}, finished=True)
            finished = True
        finally:
            self.console.close()
            self._stop_metrics_server(linger=cfg.metrics_linger if finished else 0.0)
        return self._result()

    def _stop_metrics_server(self, linger: float) -> None:
        """Stop serving ``/metrics``, after ``linger`` seconds so a scraper can read the last epoch's values."""
        if self._metrics_server is None:
            return
        if linger > 0:
            self._echo(f"{self.config.method}: serving the final metrics for {linger:g} s more (--metrics-linger)")
            time.sleep(linger)
        self._metrics_server.shutdown()
        self._metrics_server.server_close()
        self._metrics_server = None

    def _energy_now(self) -> dict[str, float]:
        """Cumulative joules per component since the run started (and the metric brought up to date)."""
        out = {}
        for name, meter in self.energy.items():
            reading = meter.read()
            out[name] = reading.joules
            delta = reading.joules - self._energy_marks.get(name, 0.0)
            if delta > 0:
                self.meter.metrics.energy(name, "measured" if reading.measured else "estimated").inc(delta)
            self._energy_marks[name] = reading.joules
        return out

    def _result(self) -> RunResult:
        cfg = self.config
        run = {"plan": self.plan.name, "session": self.run_id, "placement": self.placement}
        run["energy"] = {name: meter.read().as_dict() for name, meter in self.energy.items()}
        options = {**run, "pushed_proxy_versions": list(self.pushed_versions), "selections": list(self.selections)}
        return self.meter.result(cfg, str(self.device), options)


def train(
    config: TrainConfig,
    client: StorageClient | None = None,
    echo: Callable[[str], None] | None = None,
    energy: dict[str, EnergyMeter] | None = None,
) -> RunResult:
    """Run one training job (see :class:`Trainer`) and return its result (``energy``: other processes to meter)."""
    return Trainer(config, client=client, echo=echo, energy=energy).run()


def fit(
    model: nn.Module,
    target: str,
    dataset: str,
    test_dataset: str,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    echo: Callable[[str], None] | None = None,
    **config: Any,
) -> RunResult:
    """Train a user's ``model`` (an instance) with the trainer: proxy pushes, selections, streaming, checkpoints.

    Args:
        model: the model; samples reach it as stored (channel-last images channel-first, png/jpeg decoded with
            ``image_size``), scaled by 1/255 when uint8.
        target: the daemon's ``host:port``.
        dataset: training dataset.
        test_dataset: test dataset.
        optimizer: default SGD from ``lr``/``momentum``/``weight_decay``; the trainer's schedule (``lr``,
            ``warmup_epochs``) sets its learning rate each step.
        loss_fn: ``loss_fn(logits, labels, weights) -> scalar`` (default :func:`nessa.weighted_loss`'s form).
        echo: where per-epoch lines go.
        **config: other :class:`~nessa.trainer.config.TrainConfig` fields (``method``, ``fraction``, ``epochs``, ...).
    """
    label = f"{type(model).__module__}:{type(model).__qualname__}"
    cfg = TrainConfig(target=target, dataset=dataset, test_dataset=test_dataset, model=label, **config)
    return Trainer(cfg, echo=echo, model=model, optimizer=optimizer, loss_fn=loss_fn).run()
