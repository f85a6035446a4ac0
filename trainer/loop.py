"""The trainer's epoch loop: proxy → select → stream → weighted SGD, pipelined, checkpointed, measured.

Each epoch ``e`` of a :class:`Trainer` run:

1. **selection.** Methods that need a proxy (the selector requires gradients, losses or embeddings) export the
   current model as an int8 proxy (version = epochs trained so far) and push it before selecting. With pipelining
   (default) the selection for epoch ``e + 1`` is requested at the start of epoch ``e`` with the proxy of the
   model as it stands then (the end of epoch ``e − 1``) and runs on the daemon while epoch ``e`` trains; epoch 0's
   and epoch 1's selections both use the initial model's proxy (pushed once). Without pipelining
   (``pipeline=False``) the selection for epoch ``e`` uses the proxy of the end of epoch ``e − 1`` and the trainer
   waits for it. ``full`` trains on every sample: one ``random`` selection at fraction 1 made once and streamed
   every epoch; ``random``, ``balanced`` and the rest draw a new selection per epoch with seed
   ``epoch_seed(seed, e)``.
2. **stream.** The selection is streamed in a per-epoch seeded order (:func:`nessa.order.epoch_seed`), regrouped
   into batches of ``batch_size`` and decoded on a prefetch thread.
3. **train.** Loss ``mean(w_i · CE_i)`` (ALGORITHMS.md B5) with SGD (momentum, weight decay) under
   :class:`~nessa.trainer.schedule.LRSchedule` (warm-up then cosine, a function of epoch progress, stepped every
   optimizer step).
4. **evaluate** on the test dataset, streamed once by explicit indices and cached on the device.
5. **checkpoint** atomically (also every ``checkpoint_every_steps`` steps inside an epoch).

With ``reselect_every = R > 1`` a selection is made every ``R`` epochs and trained on (in a new order) in
between (ALGORITHMS.md B4); pipelined, the next one is requested one epoch before it is needed.

**CREST** (``method="crest"``) follows the paper's loop instead: each epoch has the step budget of a
``fraction`` epoch; at a selection point the trainer pushes a proxy and asks for ``P`` mini-batch coresets of
``batch_size`` samples, trains on them in order (fetching each when it is needed, cycling from memory if it runs
out), and every ``T1`` steps checks CREST's quadratic loss model (:class:`~nessa.trainer.drift.DriftMonitor`)
on a check set V_r of random training samples (drawn and streamed once per run); when ρ > τ it reselects. The
quadratic model's gradient and curvature are taken on the selection's first mini-batch coreset (each coreset is
a near-unbiased gradient estimate, CREST's premise), where the CREST code averages over the union of the ``P``
coresets: the others are fetched only when trained on, so a reselection after a few steps wastes no bytes. The
trigger decides when to select, so CREST's selections are not pipelined: their time is data wait. Its proxies
are versioned by the global step.

**Measured**: per epoch, training wall seconds (selection waits, proxy export, streaming and SGD; evaluation and
epoch-end checkpoint excluded), data-wait seconds (blocked on a selection or the next batch), bytes received from
the daemon (sample payload and metadata, as the client counts them), bytes sent (proxies), the selection's size
and timings, loss and accuracy; the same go to the Prometheus metrics of :mod:`nessa.metrics`.

**Resuming**: with a checkpoint directory, a run picks up where its last checkpoint left it: at an epoch boundary
or inside an epoch (the selection being streamed and the samples consumed are in the checkpoint; the stream
restarts after them, by selection id, or by the saved indices if the daemon no longer has the selection), with
the model, optimizer, RNG states and pending selection jobs (their proxies) restored.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nessa.client import Batch, SelectionResult, StorageClient
from nessa.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from nessa.metrics import (
    TRAINER_ACCURACY,
    TRAINER_BYTES_RECEIVED,
    TRAINER_DATA_WAIT,
    TRAINER_EPOCH,
    TRAINER_EPOCH_DURATION,
    TRAINER_LOSS,
    TRAINER_SAMPLES,
    TRAINER_SUBSET_SIZE,
)
from nessa.order import Partition, epoch_seed
from nessa.trainer.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from nessa.trainer.config import TrainConfig, method_needs_proxy, resolve_device
from nessa.trainer.data import SampleDecoder, TrainBatch, rebatch
from nessa.trainer.drift import DriftMonitor
from nessa.trainer.models import build_model
from nessa.trainer.pipeline import BatchPrefetcher, SelectionJob, SelectionPipeline
from nessa.trainer.report import RunResult
from nessa.trainer.schedule import LRSchedule

__all__ = ["CHECKPOINT_FORMAT", "TrainConfig", "Trainer", "method_needs_proxy", "resolve_device", "train"]

log = logging.getLogger("nessa.trainer")

#: Version of the checkpoint payload layout.
CHECKPOINT_FORMAT = 1


@dataclass
class _EpochState:
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


def _tensor_from_bytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def _selection_to_state(sel: SelectionResult) -> dict[str, Any]:
    return {
        "id": sel.id,
        "dataset": sel.dataset,
        "method": sel.method,
        "indices": torch.from_numpy(np.asarray(sel.indices, dtype=np.int64).copy()),
        "weights": torch.from_numpy(np.asarray(sel.weights, dtype=np.float32).copy()),
        "proxy_version": sel.proxy_version,
        "timings": dict(sel.timings),
        "num_candidates": sel.num_candidates,
        "selected_bytes": sel.selected_bytes,
        "candidate_bytes": sel.candidate_bytes,
        "objective": float(sel.objective) if math.isfinite(sel.objective) else None,
    }


def _selection_from_state(state: dict[str, Any]) -> SelectionResult:
    return SelectionResult(
        id=state["id"],
        dataset=state["dataset"],
        method=state["method"],
        indices=state["indices"].numpy(),
        weights=state["weights"].numpy(),
        objective=float("nan") if state.get("objective") is None else float(state["objective"]),
        proxy_version=state.get("proxy_version"),
        timings=dict(state.get("timings", {})),
        num_candidates=int(state.get("num_candidates", 0)),
        selected_bytes=int(state.get("selected_bytes", 0)),
        candidate_bytes=int(state.get("candidate_bytes", 0)),
    )


class Trainer:
    """Runs one training job against a storage daemon; see the module docstring.

    Args:
        config: the run.
        client: a client to use (default: one built from ``config.target``, ``token`` and ``tls``).
        echo: where per-epoch lines go (default: the ``nessa.trainer`` logger at INFO).
    """

    def __init__(
        self,
        config: TrainConfig,
        client: StorageClient | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.client = client or StorageClient(config.target, token=config.token, tls=config.tls)
        self._echo = echo or log.info
        self.needs_proxy = method_needs_proxy(config.method)
        self.device = resolve_device(config.device)
        self.history: list[dict[str, Any]] = []
        self.selections: list[dict[str, Any]] = []  # every selection used: epoch, id, proxy versions
        self.pushed_versions: list[int] = []
        self._bar: Any = None
        self._metrics_server: Any = None
        self._full_selection: SelectionResult | None = None
        self._totals = {"eval_seconds": 0.0, "eval_bytes": 0, "setup_bytes": 0}
        self._sent_mark = 0
        self._recv_mark = 0
        self._metric_mark: dict[str, int] = {}

    # -- setup ---------------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        self.info = self.client.describe(cfg.dataset)
        self._metric_bytes(cfg.dataset)
        self.test_info = self.client.describe(cfg.test_dataset)
        self._metric_bytes(cfg.test_dataset)
        recv, _ = self._bytes_delta()
        self._totals["setup_bytes"] += recv
        if self.test_info.sample_shape != self.info.sample_shape or self.test_info.dtype != self.info.dtype:
            raise InvalidArgumentError(
                f"test dataset {cfg.test_dataset!r} has samples {self.test_info.sample_shape} {self.test_info.dtype} "
                f"but {cfg.dataset!r} has {self.info.sample_shape} {self.info.dtype}; pair a dataset with its own "
                "test split"
            )
        if self.info.num_samples < 1 or self.test_info.num_samples < 1:
            raise FailedPreconditionError("the training and test datasets must hold samples; ingest them first")
        self.decoder = SampleDecoder(self.info, cfg.model)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 - seeds the legacy global generator third-party code uses
        self.model: nn.Module = build_model(cfg.model, **self.decoder.model_kwargs()).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.schedule = LRSchedule(cfg.lr, cfg.epochs, cfg.warmup_epochs)
        self.monitor: DriftMonitor | None = None
        if cfg.method == "crest":
            self.monitor = DriftMonitor(
                self.model,
                tau=cfg.crest_tau,
                interval_mul=cfg.crest_interval_mul,
                batch_num_mul=cfg.crest_batch_num_mul,
                seed=cfg.seed,
            )
        if cfg.metrics_port is not None:
            from nessa.metrics import start_metrics_server

            self._metrics_server = start_metrics_server(cfg.metrics_port)
            # Series exist at zero from the first scrape, so rate()/increase() see the first epoch's change.
            for dataset in (cfg.dataset, cfg.test_dataset):
                for kind in ("samples", "metadata"):
                    TRAINER_BYTES_RECEIVED.labels(dataset=dataset, kind=kind)
            TRAINER_SAMPLES.labels(dataset=cfg.dataset)

    def _bytes_delta(self) -> tuple[int, int]:
        """Bytes received and sent since the last call (the client counts across threads)."""
        recv = sum(self.client.bytes_received.values())
        sent = sum(self.client.bytes_sent.values())
        d_recv, d_sent = recv - self._recv_mark, sent - self._sent_mark
        self._recv_mark, self._sent_mark = recv, sent
        return d_recv, d_sent

    def _metric_bytes(self, dataset: str | None = None) -> None:
        """Add the bytes received since the last call (by kind) to ``nessa_trainer_bytes_received_total``.

        Counting from a running mark (not per streaming window) includes what the selection thread receives
        (``Select`` replies) whenever it arrives, so the counter's total equals the run's ``bytes_to_trainer``
        plus its ``eval_bytes`` and ``setup_bytes``: everything the daemon sent this trainer, under the dataset
        it was about (``dataset``; default the training dataset).
        """
        label = dataset or self.config.dataset
        for kind, value in dict(self.client.bytes_received).items():
            delta = value - self._metric_mark.get(kind, 0)
            if delta > 0:
                TRAINER_BYTES_RECEIVED.labels(dataset=label, kind=kind).inc(delta)
            self._metric_mark[kind] = value

    # -- test set ------------------------------------------------------------------------------------------------

    def _cache_test_set(self) -> None:
        cfg = self.config
        start = time.perf_counter()
        self._bytes_delta()  # the describe calls before are setup (counted there), not evaluation
        xs, ys = [], []
        n = self.test_info.num_samples
        for tb in rebatch(
            self.client.stream(np.arange(n, dtype=np.int64), dataset=cfg.test_dataset, batch_size=1024),
            cfg.eval_batch_size,
            SampleDecoder(self.test_info, cfg.model),
        ):
            xs.append(tb.x)
            ys.append(tb.y)
        self.test_x = torch.cat(xs).to(self.device)
        self.test_y = torch.cat(ys).to(self.device)
        self._metric_bytes(cfg.test_dataset)
        recv, _ = self._bytes_delta()
        self._totals["eval_bytes"] += recv
        self._totals["eval_seconds"] += time.perf_counter() - start

    def evaluate(self) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the current model on the cached test set."""
        was = self.model.training
        self.model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.test_y), self.config.eval_batch_size):
                x = self.test_x[i : i + self.config.eval_batch_size]
                y = self.test_y[i : i + self.config.eval_batch_size]
                logits = self.model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum").item())
                correct += int((logits.argmax(1) == y).sum().item())
        self.model.train(was)
        n = max(len(self.test_y), 1)
        return loss_sum / n, correct / n

    # -- selection -----------------------------------------------------------------------------------------------

    def export_proxy(self, version: int) -> bytes:
        """Serialize the current model as a proxy of ``version`` (on a CPU copy; the live model is untouched)."""
        from nessa.proxy import dumps, export

        snapshot = copy.deepcopy(self.model).cpu()
        proxy = export(
            snapshot,
            self.decoder.example_input(),
            quantize=self.config.quantize,
            version=version,
            normalization=self.decoder.normalization,
        )
        return dumps(proxy)

    def _job(self, epoch: int, version: int, last: SelectionJob | None) -> SelectionJob:
        if not self.needs_proxy:
            return SelectionJob(epoch=epoch)
        if last is not None and last.proxy_version == version and last.proxy is not None:
            return SelectionJob(epoch=epoch, proxy=last.proxy, proxy_version=version, push=False)
        return SelectionJob(epoch=epoch, proxy=self.export_proxy(version), proxy_version=version)

    def _fetch(self, job: SelectionJob) -> SelectionResult:
        """Push the job's proxy if asked, then select (runs on the pipeline's thread)."""
        cfg = self.config
        if job.proxy is not None and job.push:
            ack = self.client.push_proxy(job.proxy, cfg.dataset)
            self.pushed_versions.append(ack.version)
        if cfg.method == "full":
            if self._full_selection is None:
                self._full_selection = self.client.select(cfg.dataset, "random", fraction=1.0, seed=0)
            return self._full_selection
        sel = self.client.select(
            cfg.dataset,
            cfg.method,
            fraction=cfg.fraction,
            seed=epoch_seed(cfg.seed, job.epoch),
            proxy_version=job.proxy_version,
            engine=cfg.engine,
            options=cfg.options,
        )
        if job.proxy_version is not None and sel.proxy_version != job.proxy_version:
            raise FailedPreconditionError(
                f"the daemon selected with proxy version {sel.proxy_version}, not the {job.proxy_version} pushed; "
                "another trainer is pushing proxies for the same dataset — give each run its own daemon"
            )
        return sel

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _payload(
        self,
        next_epoch: int,
        current: _EpochState | None,
        selection: SelectionResult | None,
        jobs: list[SelectionJob],
        finished: bool = False,
        crest: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.resume_key(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "next_epoch": next_epoch,
            "current": None if current is None else asdict(current),
            "selection": None if selection is None else _selection_to_state(selection),
            "jobs": [
                {
                    "epoch": j.epoch,
                    "proxy": None if j.proxy is None else _tensor_from_bytes(j.proxy),
                    "proxy_version": j.proxy_version,
                }
                for j in jobs
            ],
            "history": self.history,
            "selections": self.selections,
            "pushed_versions": self.pushed_versions,
            "totals": dict(self._totals),
            "rng": capture_rng_state(),
            "crest": crest,
            "finished": finished,
        }

    def _save(self, *args: Any, **kwargs: Any) -> None:
        if self.config.checkpoint_dir:
            save_checkpoint(self.config.checkpoint_dir, self._payload(*args, **kwargs))

    def _restore(self) -> dict[str, Any] | None:
        if not self.config.checkpoint_dir:
            return None
        ckpt = load_checkpoint(self.config.checkpoint_dir)
        if ckpt is None:
            return None
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise FailedPreconditionError(
                f"checkpoint in {self.config.checkpoint_dir} has format {ckpt.get('format')}, this trainer writes "
                f"{CHECKPOINT_FORMAT}; use another --checkpoint-dir"
            )
        theirs, ours = ckpt.get("config", {}), self.config.resume_key()
        diff = sorted(k for k in ours if theirs.get(k) != ours[k])
        if diff:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} → {ours[k]!r}" for k in diff)
            raise FailedPreconditionError(
                f"checkpoint in {self.config.checkpoint_dir} is of another run ({detail}); use a new --checkpoint-dir "
                "or the same settings"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.history = list(ckpt.get("history", []))
        self.selections = list(ckpt.get("selections", []))
        self.pushed_versions = list(ckpt.get("pushed_versions", []))
        this_start = self._totals["setup_bytes"]  # this start's Describe replies add to the earlier starts'
        self._totals.update(ckpt.get("totals", {}))
        self._totals["setup_bytes"] = int(self._totals.get("setup_bytes", 0)) + this_start
        restore_rng_state(ckpt["rng"])
        if self.monitor is not None and ckpt.get("crest"):
            self.monitor.load_state_dict(ckpt["crest"]["monitor"], self.device)
        return ckpt

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train every epoch (resuming from the checkpoint if there is one) and return the result."""
        cfg = self.config
        self._setup()
        ckpt = self._restore()
        if ckpt is not None and ckpt.get("finished"):
            self._echo(f"{cfg.method}: the checkpoint in {cfg.checkpoint_dir} is of a finished run; nothing to do")
            return self._result()
        self._cache_test_set()
        self._bytes_delta()
        start_epoch = 0 if ckpt is None else int(ckpt["next_epoch"])
        current = None if ckpt is None or ckpt.get("current") is None else _EpochState(**ckpt["current"])
        if ckpt is not None:
            where = f"epoch {start_epoch}" + (f", sample {current.position}" if current is not None else "")
            self._echo(f"{cfg.method}: resuming from {where} ({cfg.checkpoint_dir})")
        self._open_bar(start_epoch, current)
        finished = False
        try:
            if cfg.method == "crest":
                self._run_crest(start_epoch, current, ckpt)
            else:
                self._run_selected(start_epoch, current, ckpt)
            self._save(cfg.epochs, None, None, [], finished=True)
            finished = True
        finally:
            if self._bar is not None:
                self._bar.close()
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

    def _steps_estimate(self) -> int:
        n = self.info.num_samples
        if self.config.method != "full":
            n = math.ceil(self.config.fraction * n)
        return max(1, math.ceil(n / self.config.batch_size))

    def _open_bar(self, start_epoch: int, current: _EpochState | None) -> None:
        if not self.config.progress:
            return
        from tqdm.auto import tqdm

        per_epoch = self._steps_estimate()
        done = start_epoch * per_epoch + (current.step if current is not None else 0)
        self._bar = tqdm(
            total=self.config.epochs * per_epoch,
            initial=done,
            desc=self.config.progress_desc or self.config.method,
            unit="step",
            leave=True,
            dynamic_ncols=True,
        )

    def _say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            self._echo(text)

    # -- selection-per-epoch methods -----------------------------------------------------------------------------

    def _run_selected(self, start_epoch: int, current: _EpochState | None, ckpt: dict[str, Any] | None) -> None:
        cfg = self.config
        every = cfg.reselect_every
        pipeline: SelectionPipeline[SelectionResult] = SelectionPipeline(self._fetch)
        held: SelectionResult | None = None  # the selection being trained on (reused between reselections)
        resume_mid = False
        last_job: SelectionJob | None = None
        try:
            if ckpt is not None:
                for j in ckpt.get("jobs", []):
                    proxy = None if j["proxy"] is None else bytes(j["proxy"].numpy().tobytes())
                    last_job = SelectionJob(epoch=j["epoch"], proxy=proxy, proxy_version=j["proxy_version"])
                    pipeline.submit(last_job)
                if ckpt.get("selection") is not None:
                    held = _selection_from_state(ckpt["selection"])
                    resume_mid = current is not None
            for epoch in range(start_epoch, cfg.epochs):
                state = current if current is not None and current.epoch == epoch else _EpochState(epoch=epoch)
                current = None
                t0 = time.perf_counter()
                selects = epoch % every == 0 and not resume_mid
                resume_mid = False
                if selects and not pipeline.submitted(epoch):
                    last_job = self._job(epoch, epoch, last_job)
                    pipeline.submit(last_job)
                nxt = epoch + 1
                if cfg.pipeline and nxt < cfg.epochs and nxt % every == 0 and not pipeline.submitted(nxt):
                    last_job = self._job(nxt, epoch, last_job)
                    pipeline.submit(last_job)
                if selects:
                    held, waited = pipeline.result(epoch)
                    state.selection_wait += waited
                    state.data_wait += waited
                    TRAINER_DATA_WAIT.observe(waited)
                    self.selections.append(
                        {
                            "epoch": epoch,
                            "id": held.id,
                            "size": len(held),
                            "proxy_version": held.proxy_version,
                            "cached": held.cached,
                            "timings": dict(held.timings),
                        }
                    )
                if held is None:
                    raise FailedPreconditionError(f"no selection to train epoch {epoch} on; start the run over")
                state.selected_bytes = held.selected_bytes
                state.seconds += time.perf_counter() - t0
                self._train_selection(epoch, held, state, pipeline)
                self._end_epoch(state, held, pipeline.pending_jobs(), keep=held if every > 1 else None)
        finally:
            pipeline.close()

    def _stream_batches(self, sel: SelectionResult, epoch: int, skip: int) -> BatchPrefetcher[TrainBatch]:
        """Stream ``sel`` in epoch ``epoch``'s order after ``skip`` consumed samples, decoded on a prefetch thread."""
        cfg = self.config
        seed = epoch_seed(cfg.seed, epoch)
        part = Partition(block_size=cfg.batch_size, skip=skip) if skip else None
        msg_batch = cfg.stream_batch_size or cfg.batch_size

        def source() -> Iterator[Batch]:
            stream = self.client.stream(
                sel.id, dataset=cfg.dataset, batch_size=msg_batch, shuffle_seed=seed, partition=part
            )
            try:
                first = next(stream, None)
            except NotFoundError:
                # The daemon no longer has the selection (evicted, or restarted without its state): stream the saved
                # indices in the same order (the order is a function of the seed and the list), weights from the
                # saved selection.
                self._say(f"{cfg.method}: selection {sel.id} is gone from the daemon; streaming its saved indices")
                lookup = {int(i): float(w) for i, w in zip(sel.indices.tolist(), sel.weights.tolist(), strict=True)}
                for b in self.client.stream(
                    sel.indices, dataset=cfg.dataset, batch_size=msg_batch, shuffle_seed=seed, partition=part
                ):
                    b.weights = np.asarray([lookup[i] for i in b.indices.tolist()], dtype=np.float32)
                    yield b
                return
            if first is None:
                return
            yield first
            yield from stream

        return BatchPrefetcher(
            rebatch(source(), cfg.batch_size, self.decoder), convert=_identity, depth=cfg.prefetch_batches
        )

    def _train_step(self, batch: TrainBatch, state: _EpochState, steps_in_epoch: int) -> None:
        cfg = self.config
        lr = self.schedule.lr_for_step(state.epoch, min(state.step, steps_in_epoch - 1), steps_in_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = batch.x.to(self.device, non_blocking=True)
        y = batch.y.to(self.device, non_blocking=True)
        w = batch.w.to(self.device, non_blocking=True)
        self.model.train()
        logits = self.model(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        loss = (per_sample * w).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = len(batch)
        state.loss_sum += float(per_sample.detach().sum().item())
        state.weighted_loss_sum += float(loss.detach().item()) * n
        state.correct += int((logits.detach().argmax(1) == y).sum().item())
        state.seen += n
        state.position += n
        state.step += 1
        state.payload_bytes += batch.payload_bytes
        TRAINER_SAMPLES.labels(dataset=cfg.dataset).inc(n)
        self._metric_bytes()
        if self._bar is not None:
            self._bar.update(1)

    def _maybe_checkpoint_mid(
        self, state: _EpochState, sel: SelectionResult, jobs: list[SelectionJob], t0: float, crest: Any = None
    ) -> float:
        """Checkpoint inside the epoch every ``checkpoint_every_steps``; returns the new segment start."""
        every = self.config.checkpoint_every_steps
        if not self.config.checkpoint_dir or not every or state.step % every:
            return t0
        now = time.perf_counter()
        state.seconds += now - t0
        recv, sent = self._bytes_delta()
        state.bytes_to_trainer += recv
        state.bytes_to_storage += sent
        self._save(state.epoch, state, sel, jobs, crest=crest)
        return time.perf_counter()

    def _train_selection(
        self, epoch: int, sel: SelectionResult, state: _EpochState, pipeline: SelectionPipeline[SelectionResult]
    ) -> None:
        cfg = self.config
        if len(sel) == 0:
            raise FailedPreconditionError(f"the daemon returned an empty selection for epoch {epoch}")
        steps = math.ceil(len(sel) / cfg.batch_size)
        t0 = time.perf_counter()
        if state.position < len(sel):
            prefetch = self._stream_batches(sel, epoch, state.position)
            try:
                for batch in prefetch:
                    wait = prefetch.waits[-1]
                    state.data_wait += wait
                    TRAINER_DATA_WAIT.observe(wait)
                    self._train_step(batch, state, steps)
                    t0 = self._maybe_checkpoint_mid(state, sel, pipeline.pending_jobs(), t0)
            finally:
                prefetch.close()
        state.seconds += time.perf_counter() - t0

    # -- CREST -------------------------------------------------------------------------------------------------

    def _run_crest(self, start_epoch: int, current: _EpochState | None, ckpt: dict[str, Any] | None) -> None:
        cfg = self.config
        monitor = self.monitor
        if monitor is None:  # built in _setup for crest
            raise FailedPreconditionError("CREST needs its drift monitor")
        crest_state = (ckpt or {}).get("crest") or {}
        num_minibatches = int(crest_state.get("num_minibatches", cfg.crest_batch_num_mul))
        steps_per_epoch = self._steps_estimate()
        cycle: _CrestCycle | None = None
        interval = 1
        since = 0
        check: tuple[torch.Tensor, torch.Tensor] | None = None
        try:
            for epoch in range(start_epoch, cfg.epochs):
                state = current if current is not None and current.epoch == epoch else _EpochState(epoch=epoch)
                current = None
                t0 = time.perf_counter()
                reselect = cycle is None
                while state.step < steps_per_epoch:
                    if reselect:
                        if cycle is not None:
                            cycle.close()
                        sel_start = time.perf_counter()
                        if check is None:
                            check = self._crest_check_set()
                        cycle = self._crest_select(epoch, state, num_minibatches)
                        batch, _ = cycle.next()
                        monitor.reset(
                            batch.x.to(self.device),
                            batch.y.to(self.device),
                            batch.w.to(self.device),
                            check[0],
                            check[1],
                        )
                        interval, num_minibatches = monitor.adapt(steps_per_epoch)
                        waited = time.perf_counter() - sel_start
                        state.data_wait += waited
                        state.selection_wait += waited
                        TRAINER_DATA_WAIT.observe(waited)
                        state.reselections += 1
                        since = 0
                        reselect = False
                    elif cycle is not None:
                        batch, wait = cycle.next()
                        state.data_wait += wait
                        TRAINER_DATA_WAIT.observe(wait)
                    else:  # unreachable: reselect is True whenever there is no cycle
                        raise FailedPreconditionError("CREST has no selection to train on")
                    self._train_step(batch, state, steps_per_epoch)
                    since += 1
                    if since % interval == 0:
                        result = monitor.check()
                        state.checks += 1
                        state.rho_sum += result.rho if math.isfinite(result.rho) else 0.0
                        reselect = result.reselect
                    crest_ckpt = {"monitor": monitor.state_dict(), "num_minibatches": num_minibatches}
                    t0 = self._maybe_checkpoint_mid(state, cycle.selection, [], t0, crest=crest_ckpt)
                state.seconds += time.perf_counter() - t0
                if cycle is None:
                    raise FailedPreconditionError("CREST trained an epoch without a selection")
                crest_ckpt = {"monitor": monitor.state_dict(), "num_minibatches": num_minibatches}
                self._end_epoch(state, cycle.selection, [], crest=crest_ckpt)
        finally:
            if cycle is not None:
                cycle.close()

    def _crest_check_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CREST's V_r: ``crest_check_size`` random training samples (seeded), streamed once per run."""
        cfg = self.config
        n = self.info.num_samples
        rng = np.random.default_rng(epoch_seed(cfg.seed, 0) ^ 0x5EED)
        idx = np.sort(rng.choice(n, size=min(n, cfg.crest_check_size), replace=False)).astype(np.int64)
        xs, ys = [], []
        for tb in rebatch(self.client.stream(idx, dataset=cfg.dataset, batch_size=1024), 1024, self.decoder):
            xs.append(tb.x)
            ys.append(tb.y)
        return torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)

    def _crest_select(self, epoch: int, state: _EpochState, num_minibatches: int) -> _CrestCycle:
        """Push a proxy and ask for ``num_minibatches`` mini-batch coresets of ``batch_size`` samples."""
        cfg = self.config
        global_step = epoch * self._steps_estimate() + state.step
        version = global_step
        proxy = self.export_proxy(version)
        ack = self.client.push_proxy(proxy, cfg.dataset)
        self.pushed_versions.append(ack.version)
        count = min(self.info.num_samples, num_minibatches * cfg.batch_size)
        options = {**cfg.options, "minibatch_size": cfg.batch_size}
        sel = self.client.select(
            cfg.dataset,
            "crest",
            count=count,
            seed=epoch_seed(cfg.seed, global_step),
            proxy_version=version,
            engine=cfg.engine,
            options=options,
        )
        if sel.proxy_version != version:
            raise FailedPreconditionError(
                f"the daemon selected with proxy version {sel.proxy_version}, not the {version} pushed; give each "
                "run its own daemon"
            )
        self.selections.append(
            {
                "epoch": epoch,
                "step": state.step,
                "id": sel.id,
                "size": len(sel),
                "proxy_version": sel.proxy_version,
                "cached": sel.cached,
                "timings": dict(sel.timings),
            }
        )
        state.selected_bytes += sel.selected_bytes
        return _CrestCycle(self, sel, seed=epoch_seed(cfg.seed, global_step))

    # -- epoch end -----------------------------------------------------------------------------------------------

    def _end_epoch(
        self,
        state: _EpochState,
        sel: SelectionResult,
        jobs: list[SelectionJob],
        crest: dict[str, Any] | None = None,
        keep: SelectionResult | None = None,
    ) -> None:
        cfg = self.config
        recv, sent = self._bytes_delta()
        state.bytes_to_trainer += recv
        state.bytes_to_storage += sent
        self._metric_bytes()
        t_eval = time.perf_counter()
        test_loss, test_acc = self.evaluate()
        self._totals["eval_seconds"] += time.perf_counter() - t_eval
        prev = self.history[-1] if self.history else None
        seen = max(state.seen, 1)
        record: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": state.loss_sum / seen,
            "train_weighted_loss": state.weighted_loss_sum / seen,
            "train_accuracy": state.correct / seen,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "samples": state.seen,
            "steps": state.step,
            "subset_size": len(sel) if cfg.method != "crest" else state.seen,
            "selection_id": sel.id,
            "selection_proxy_version": sel.proxy_version,
            "selection_seconds": float(sel.timings.get("total_seconds", 0.0)),
            "selected_bytes": state.selected_bytes,
            "payload_bytes": state.payload_bytes,
            "epoch_seconds": state.seconds,
            "data_wait_seconds": state.data_wait,
            "selection_wait_seconds": state.selection_wait,
            "bytes_to_trainer": state.bytes_to_trainer,
            "bytes_to_storage": state.bytes_to_storage,
            "lr_end": float(self.optimizer.param_groups[0]["lr"]),
            "wall_seconds": (prev["wall_seconds"] if prev else 0.0) + state.seconds,
            "bytes_to_trainer_total": (prev["bytes_to_trainer_total"] if prev else 0) + state.bytes_to_trainer,
            "bytes_to_storage_total": (prev["bytes_to_storage_total"] if prev else 0) + state.bytes_to_storage,
        }
        if cfg.method == "crest":
            record.update(
                reselections=state.reselections,
                drift_checks=state.checks,
                mean_rho=state.rho_sum / state.checks if state.checks else None,
            )
        self.history.append(record)
        TRAINER_EPOCH.set(state.epoch)
        TRAINER_SUBSET_SIZE.labels(dataset=cfg.dataset).set(record["subset_size"])
        TRAINER_EPOCH_DURATION.observe(state.seconds)
        TRAINER_LOSS.labels(split="train").set(record["train_loss"])
        TRAINER_LOSS.labels(split="test").set(test_loss)
        TRAINER_ACCURACY.labels(split="train").set(record["train_accuracy"])
        TRAINER_ACCURACY.labels(split="test").set(test_acc)
        self._say(
            f"{cfg.method} epoch {state.epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f} "
            f"test acc {test_acc * 100:.2f}% | {state.seen} samples, {state.seconds:.2f} s "
            f"(data wait {state.data_wait:.2f} s), {state.bytes_to_trainer} B in, {state.bytes_to_storage} B out"
        )
        if self._bar is not None:
            self._bar.set_postfix(acc=f"{test_acc * 100:.2f}%", loss=f"{record['train_loss']:.3f}")
        self._save(state.epoch + 1, None, keep, jobs, crest=crest)

    def _result(self) -> RunResult:
        cfg = self.config
        return RunResult(
            method=cfg.method,
            fraction=cfg.fraction,
            epochs=list(self.history),
            wall_seconds=sum(r["epoch_seconds"] for r in self.history),
            bytes_to_trainer=sum(int(r["bytes_to_trainer"]) for r in self.history),
            bytes_to_storage=sum(int(r["bytes_to_storage"]) for r in self.history),
            data_wait_seconds=sum(r["data_wait_seconds"] for r in self.history),
            eval_seconds=float(self._totals["eval_seconds"]),
            eval_bytes=int(self._totals["eval_bytes"]),
            setup_bytes=int(self._totals["setup_bytes"]),
            model=cfg.model,
            device=str(self.device),
            options={
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "warmup_epochs": cfg.warmup_epochs,
                "seed": cfg.seed,
                "reselect_every": cfg.reselect_every,
                "pipeline": cfg.pipeline,
                "method_options": dict(cfg.options),
                "pushed_proxy_versions": list(self.pushed_versions),
                "selections": list(self.selections),
            },
        )


class _CrestCycle:
    """CREST's current selection as training batches: its mini-batch coresets in order, then cycled from memory.

    Each mini-batch coreset is fetched by its explicit indices when the loop asks for it (no read-ahead: a drift
    check may end the selection after any step, and bytes streamed ahead would be wasted). Weights come from the
    selection. Once every coreset was trained on, they are cycled from memory in a seeded order.
    """

    def __init__(self, trainer: Trainer, selection: SelectionResult, seed: int) -> None:
        self.selection = selection
        cfg = trainer.config
        b = cfg.batch_size
        chunks = [
            (selection.indices[i : i + b], selection.weights[i : i + b]) for i in range(0, len(selection.indices), b)
        ]

        def source() -> Iterator[Batch]:
            for idx, wts in chunks:
                lookup = dict(zip(idx.tolist(), wts.tolist(), strict=True))
                for part in trainer.client.stream(idx, dataset=cfg.dataset, batch_size=b):
                    part.weights = np.asarray([lookup[i] for i in part.indices.tolist()], dtype=np.float32)
                    yield part

        self._batches: Iterator[TrainBatch] | None = rebatch(source(), b, trainer.decoder)
        self._cache: list[TrainBatch] = []
        self._order: list[int] = []
        self._rng = np.random.default_rng(seed)

    def next(self) -> tuple[TrainBatch, float]:
        """The next batch and the seconds waited for it."""
        start = time.perf_counter()
        if self._batches is not None:
            batch = next(self._batches, None)
            if batch is not None:
                self._cache.append(batch)
                return batch, time.perf_counter() - start
            self._batches = None
            if not self._cache:
                raise FailedPreconditionError("the CREST selection streamed no samples")
        if not self._order:
            self._order = self._rng.permutation(len(self._cache)).tolist()
        return self._cache[self._order.pop()], time.perf_counter() - start

    def close(self) -> None:
        """Stop fetching (a reselection or the end of the run)."""
        if self._batches is not None:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()
            self._batches = None


def _identity(batch: TrainBatch) -> TrainBatch:
    return batch


def train(
    config: TrainConfig, client: StorageClient | None = None, echo: Callable[[str], None] | None = None
) -> RunResult:
    """Run one training job (see :class:`Trainer`) and return its result."""
    return Trainer(config, client=client, echo=echo).run()
