"""Select, then train: a weighted subset every ``reselect_every`` epochs, requested one epoch ahead.

With pipelining (default) the selection for epoch ``e + 1`` is requested at the start of epoch ``e`` with the proxy
of the model as it stands then (the end of epoch ``e − 1``), so the daemon selects while epoch ``e`` trains; epoch
0's and 1's selections both use the initial model's proxy (pushed once). Without pipelining, epoch ``e`` waits for
a selection made with the end of epoch ``e − 1``. Each selection is seeded by ``epoch_seed(seed, e)`` and streamed
in that epoch's order.
"""

from __future__ import annotations

import time
from typing import Any

from nessa.errors import FailedPreconditionError
from nessa.order import epoch_seed
from nessa.records import Selection
from nessa.trainer.meter import EpochState
from nessa.trainer.plans.base import Plan
from nessa.trainer.selecting import SelectionJob, SelectionPipeline

__all__ = ["EpochPlan", "FullPlan"]


class EpochPlan(Plan):
    """Per-epoch selection (random, balanced, CRAIG, AdaCore, ...), pipelined, with ``reselect_every``."""

    name = "epoch"

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        self.pipeline: SelectionPipeline[Selection] = SelectionPipeline(self.fetch)

    def state_dict(self) -> dict[str, Any]:
        """The selection jobs requested and not yet trained on (with their proxies)."""
        return {"jobs": [job.to_state() for job in self.pipeline.pending_jobs()]}

    def job(self, epoch: int, version: int, last: SelectionJob | None) -> SelectionJob:
        """The job for ``epoch``'s selection, with a proxy of ``version`` when the method needs one."""
        t = self.trainer
        if not t.needs_proxy:
            return SelectionJob(epoch=epoch)
        if last is not None and last.proxy_version == version and last.proxy is not None:
            return SelectionJob(epoch=epoch, proxy=last.proxy, proxy_version=version, push=False)
        return SelectionJob(epoch=epoch, proxy=t.export_proxy(version), proxy_version=version)

    def fetch(self, job: SelectionJob) -> Selection:
        """Push the job's proxy if asked, then select (on the pipeline's thread)."""
        t = self.trainer
        cfg = t.config
        if job.proxy is not None and job.push:
            t.push_proxy(job.proxy)
        return t.select(
            method=cfg.method,
            fraction=cfg.fraction,
            seed=epoch_seed(cfg.seed, job.epoch),
            proxy_version=job.proxy_version,
        )

    def run(self, start_epoch: int, current: EpochState | None, saved: dict[str, Any] | None) -> None:
        """Train epochs ``start_epoch ..``."""
        t = self.trainer
        cfg = t.config
        every = cfg.reselect_every
        held: Selection | None = t.resumed_selection  # the selection being trained on (kept between reselections)
        resume_mid = held is not None and current is not None
        last_job: SelectionJob | None = None
        try:
            for state in (saved or {}).get("jobs", []):
                last_job = SelectionJob.from_state(state)
                self.pipeline.submit(last_job)
            for epoch in range(start_epoch, cfg.epochs):
                if t.stop_requested:
                    break
                state = current if current is not None and current.epoch == epoch else EpochState(epoch=epoch)
                current = None
                t0 = time.perf_counter()
                selects = epoch % every == 0 and not resume_mid
                resume_mid = False
                if selects and not self.pipeline.submitted(epoch):
                    last_job = self.job(epoch, epoch, last_job)
                    self.pipeline.submit(last_job)
                nxt = epoch + 1
                if cfg.pipeline and nxt < cfg.epochs and nxt % every == 0 and not self.pipeline.submitted(nxt):
                    last_job = self.job(nxt, epoch, last_job)
                    self.pipeline.submit(last_job)
                if selects:
                    held, waited = self.pipeline.result(epoch)
                    t.meter.wait(state, waited, selection=True)
                    t.log_selection(epoch, held)
                if held is None:
                    raise FailedPreconditionError(f"no selection to train epoch {epoch} on; start the run over")
                state.selected_bytes = held.selected_bytes
                state.subset_size = len(held)
                state.seconds += time.perf_counter() - t0
                self.train_selection(epoch, held, state)
                t.end_epoch(state, held, self.state_dict(), keep=held if every > 1 else None)
        finally:
            self.pipeline.close()

    def train_selection(self, epoch: int, sel: Selection, state: EpochState) -> None:
        """Stream ``sel`` in epoch ``epoch``'s order (after ``state.position`` samples) and train on it."""
        t = self.trainer
        if len(sel) == 0:
            raise FailedPreconditionError(f"the daemon returned an empty selection for epoch {epoch}")
        steps = -(-len(sel) // t.config.batch_size)
        t0 = time.perf_counter()
        if state.position < len(sel):
            with t.stream(sel, epoch, state.position) as batches:
                for batch in batches:
                    t.meter.wait(state, batches.last_wait)
                    t.train_step(batch, state, steps)
                    t0 = t.maybe_checkpoint_mid(state, sel, self.state_dict(), t0)
        state.seconds += time.perf_counter() - t0


class FullPlan(EpochPlan):
    """Every sample, every epoch: one ``random`` selection at fraction 1, made once and streamed each epoch."""

    name = "full"

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        self._all: Selection | None = None

    def fetch(self, job: SelectionJob) -> Selection:
        """The whole dataset as one selection (asked for once)."""
        if self._all is None:
            self._all = self.trainer.select(method="random", fraction=1.0, seed=0, proxy_version=None, stateless=True)
        return self._all
