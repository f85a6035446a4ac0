"""CREST's loop: mini-batch coresets, reselected when the quadratic loss model drifts.

Each epoch has the step budget of a ``fraction`` epoch. As CREST's code does, the run first trains
``crest_warmup`` of such an epoch on random mini-batches of the whole set (a stateless ``random`` selection,
streamed like any other). At a selection point the plan pushes a proxy and asks for
``P`` mini-batch coresets of ``batch_size`` samples, trains on them in order (streamed a few coresets ahead, then
cycling from memory), and every ``T1`` steps checks CREST's quadratic model (:class:`~nessa.trainer.drift.
DriftMonitor`) on a check set V_r of random training samples (streamed once per run); when ρ > τ it reselects.
The quadratic model is fitted on the selection's first coreset (the CREST code averages over the ``P`` coresets;
the others are streamed only a few ahead of training, so a reselection after a few steps wastes little). Proxies are
versioned by the global step.

Pipelined (``pipeline=True``, the default; NeSSA's departure from the code, which stops training while it
selects): when the trigger fires, the plan exports the model as it is, and the push and the selection run on a
background thread while training goes on cycling the current coresets; when the new coresets arrive their stream is
opened, and they replace the current ones at the first step their first coreset is here (no drift checks while a
request is in flight). The first selection, which has no coresets to cycle, is waited for (with ``warm_start``, the
random warm-up goes on until it arrives). Each selection's log line keeps ``requested_step`` beside ``step`` (when it
was first trained on): the staleness the pipelining costs. ``pipeline=False`` waits for every selection, as the
code does.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from nessa.errors import FailedPreconditionError
from nessa.order import epoch_seed
from nessa.pipeline import Decode, Prefetch, Rebatch, SelectionSource
from nessa.records import Selection
from nessa.trainer.batches import TrainBatch
from nessa.trainer.drift import DriftMonitor
from nessa.trainer.meter import EpochState
from nessa.trainer.plans.base import Plan
from nessa.trainer.selecting import SelectionJob, SelectionPipeline

__all__ = ["CrestPlan"]


class CrestPlan(Plan):
    """CREST (Yang et al., 2023) as the trainer runs it; see the module docstring."""

    name = "crest"

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        cfg = trainer.config
        self.monitor = DriftMonitor(
            trainer.model,
            tau=cfg.crest_tau,
            interval_mul=cfg.crest_interval_mul,
            batch_num_mul=cfg.crest_batch_num_mul,
            seed=cfg.seed,
        )
        self.num_minibatches = int(cfg.crest_batch_num_mul)
        self.pipeline: SelectionPipeline[Selection] = SelectionPipeline(self.fetch)
        self._counts: dict[int, int] = {}  # coresets asked for, by request

    def state_dict(self) -> dict[str, Any]:
        """The drift monitor and the current number of coresets per selection."""
        return {"monitor": self.monitor.state_dict(), "num_minibatches": self.num_minibatches}

    def run(self, start_epoch: int, current: EpochState | None, saved: dict[str, Any] | None) -> None:
        """Train epochs ``start_epoch ..``."""
        t = self.trainer
        cfg = t.config
        if saved:
            self.monitor.load_state_dict(saved["monitor"], t.device)
            self.num_minibatches = int(saved.get("num_minibatches", self.num_minibatches))
        steps_per_epoch = self.steps_per_epoch()
        cycle: _Cycle | None = None
        check: tuple[torch.Tensor, torch.Tensor] | None = None
        interval, since = 1, 0
        pending: int | None = None  # the global step of a selection requested and not yet trained on
        incoming: _Cycle | None = None  # that selection, arrived, its stream opening
        warm_steps = min(round(cfg.crest_warmup * steps_per_epoch), -(-t.info.num_samples // cfg.batch_size))
        warm: tuple[Selection, Prefetch[TrainBatch]] | None = None
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if t.stop_requested:
                    break
                state = current if current is not None and current.epoch == epoch else EpochState(epoch=epoch)
                current = None
                t0 = time.perf_counter()
                reselect = cycle is None
                while state.step < steps_per_epoch:
                    done = epoch * steps_per_epoch + state.step
                    if done < warm_steps:  # CREST's random warm-up before the first selection
                        if warm is None:
                            warm = self.warmup(warm_steps, done)
                        batch = next(warm[1])
                        t.meter.wait(state, warm[1].last_wait)
                        t.train_step(batch, state, steps_per_epoch)
                        t0 = t.maybe_checkpoint_mid(state, warm[0], self.state_dict(), t0)
                        continue
                    if (reselect or cycle is None) and pending is None:
                        if check is None:
                            check = self.check_set()
                        pending = self.request(epoch, state)
                        reselect = False
                    if warm is not None and cycle is None and self._extends_warmup(pending):
                        batch = next(warm[1], None)  # warm_start: random mini-batches while the first is made
                        if batch is not None:
                            t.meter.wait(state, warm[1].last_wait)
                            t.train_step(batch, state, steps_per_epoch)
                            t0 = t.maybe_checkpoint_mid(state, warm[0], self.state_dict(), t0)
                            continue
                    if warm is not None:
                        warm[1].close()
                    if pending is not None and incoming is None and cycle is not None and cfg.pipeline:
                        sel_ready = self.pipeline.peek(pending)
                        if sel_ready is not None:  # open its stream now; switch once its first coreset is here
                            self.pipeline.result(pending)
                            incoming = _Cycle(t, sel_ready, seed=epoch_seed(cfg.seed, pending))
                    switch = pending is not None and (
                        cycle is None or not cfg.pipeline or (incoming is not None and incoming.ready())
                    )
                    if switch:
                        assert pending is not None
                        started = time.perf_counter()
                        if incoming is None:
                            sel, _ = self.pipeline.result(pending)
                            incoming = _Cycle(t, sel, seed=epoch_seed(cfg.seed, pending))
                        if cycle is not None:
                            cycle.close()
                        cycle, incoming = incoming, None
                        self.use(epoch, state, cycle.selection, pending)
                        pending = None
                        batch, _ = cycle.next()
                        t.meter.wait(state, time.perf_counter() - started, selection=True)
                        d = t.device  # the loss model's fit is CREST's training-side work, not a wait
                        assert check is not None  # drawn before the first request
                        self.monitor.reset(batch.x.to(d), batch.y.to(d), batch.w.to(d), check[0], check[1])
                        interval, self.num_minibatches = self.monitor.adapt(steps_per_epoch)
                        state.reselections += 1
                        since = 0
                    else:
                        assert cycle is not None
                        batch, waited = cycle.next()
                        t.meter.wait(state, waited)
                    t.train_step(batch, state, steps_per_epoch)
                    since += 1
                    if since % interval == 0 and pending is None:
                        result = self.monitor.check()
                        state.checks += 1
                        state.rho_sum += result.rho if math.isfinite(result.rho) else 0.0
                        reselect = result.reselect
                    t0 = t.maybe_checkpoint_mid(state, cycle.selection, self.state_dict(), t0)
                state.seconds += time.perf_counter() - t0
                trained_on = cycle.selection if cycle is not None else warm[0] if warm is not None else None
                if trained_on is None:
                    raise FailedPreconditionError("CREST trained an epoch without a selection")
                extra = {
                    "reselections": state.reselections,
                    "drift_checks": state.checks,
                    "mean_rho": state.rho_sum / state.checks if state.checks else None,
                }
                t.end_epoch(state, trained_on, self.state_dict(), extra=extra)
        finally:
            self.pipeline.close()
            for c in (cycle, incoming):
                if c is not None:
                    c.close()
            if warm is not None:
                warm[1].close()

    def _extends_warmup(self, pending: int | None) -> bool:
        """With ``warm_start``: the first selection is still being made, so the warm-up goes on."""
        cfg = self.trainer.config
        return cfg.warm_start and cfg.pipeline and pending is not None and not self.pipeline.ready(pending)

    def warmup(self, steps: int, done: int) -> tuple[Selection, Prefetch[TrainBatch]]:
        """The warm-up's random mini-batches (``steps`` of them; ``done`` already trained), streamed.

        With ``warm_start`` the subset has an epoch's steps more, to train on while the first selection is made.
        """
        t = self.trainer
        b = t.config.batch_size
        extra = self.steps_per_epoch() if t.config.warm_start and t.config.pipeline else 0
        sel = t.select(
            method="random",
            count=min(t.info.num_samples, (steps + extra) * b),
            seed=epoch_seed(t.config.seed, 0) ^ 0xC0FFEE,
            proxy_version=None,
            options={},
            stateless=True,
        )
        t.log_selection(0, sel, step=done)
        return sel, t.stream(sel, 0, done * b)

    def check_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CREST's V_r: ``crest_check_size`` random training samples (seeded), streamed once per run."""
        t = self.trainer
        cfg = t.config
        n = t.info.num_samples
        rng = np.random.default_rng(epoch_seed(cfg.seed, 0) ^ 0x5EED)
        idx = np.sort(rng.choice(n, size=min(n, cfg.crest_check_size), replace=False)).astype(np.int64)
        source = SelectionSource(t.client, idx, dataset=cfg.dataset, message_size=1024)
        xs, ys = [], []
        with Decode(Rebatch(source, 1024), t.decoder.batch) as batches:
            for tb in batches:
                xs.append(tb.x)
                ys.append(tb.y)
        return torch.cat(xs).to(t.device), torch.cat(ys).to(t.device)

    def request(self, epoch: int, state: EpochState) -> int:
        """Export the model as it is now and ask for ``num_minibatches`` coresets of ``batch_size`` samples.

        The push and the selection run on the pipeline's thread; returns the request's key, the global step (also
        the proxy version).
        """
        t = self.trainer
        global_step = epoch * self.steps_per_epoch() + state.step
        job = SelectionJob(epoch=global_step, proxy=t.export_proxy(global_step), proxy_version=global_step)
        self._counts[global_step] = self.num_minibatches
        self.pipeline.submit(job)
        return global_step

    def fetch(self, job: SelectionJob) -> Selection:
        """Push the job's proxy and select (on the pipeline's thread)."""
        t = self.trainer
        cfg = t.config
        assert job.proxy is not None
        t.push_proxy(job.proxy)
        return t.select(
            method="crest",
            count=min(t.info.num_samples, self._counts.pop(job.epoch) * cfg.batch_size),
            seed=epoch_seed(cfg.seed, job.epoch),
            proxy_version=job.proxy_version,
            options={**cfg.options, "minibatch_size": cfg.batch_size},
        )

    def use(self, epoch: int, state: EpochState, sel: Selection, requested: int) -> None:
        """Log that training moves to a selection requested at global step ``requested``."""
        t = self.trainer
        t.log_selection(epoch, sel, step=state.step)
        t.selections[-1]["requested_step"] = requested
        state.selected_bytes += sel.selected_bytes


class _Cycle:
    """A CREST selection as training batches: its coresets in order, streamed ahead as one stream, then cycled.

    The stream reads ``prefetch_batches`` coresets ahead of training (so a coreset is never waited for); a drift
    check that ends the selection early wastes at most those.
    """

    def __init__(self, trainer: Any, selection: Selection, seed: int) -> None:
        self.selection = selection
        cfg = trainer.config
        b = cfg.batch_size
        source = SelectionSource(trainer.client, selection, message_size=b)  # the selection's order: coreset by coreset
        self._stream: Prefetch[TrainBatch] | None = Prefetch(
            Decode(Rebatch(source, b), trainer.decoder.batch), depth=cfg.prefetch_batches
        ).start()
        self._cache: list[TrainBatch] = []
        self._order: list[int] = []
        self._rng = np.random.default_rng(seed)

    def ready(self) -> bool:
        """Whether the next batch is here (training can switch to this selection without waiting)."""
        return self._stream is None or self._stream.ready()

    def next(self) -> tuple[TrainBatch, float]:
        """The next batch and the seconds waited for it."""
        start = time.perf_counter()
        if self._stream is not None:
            batch = next(self._stream, None)
            if batch is not None:
                self._cache.append(batch)
                return batch, time.perf_counter() - start
            self.close()
            if not self._cache:
                raise FailedPreconditionError("the CREST selection streamed no samples")
        if not self._order:
            self._order = self._rng.permutation(len(self._cache)).tolist()
        return self._cache[self._order.pop()], time.perf_counter() - start

    def close(self) -> None:
        """Stop streaming (a reselection or the end of the run)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
