"""Select, then train: a weighted subset every ``reselect_every`` epochs (0: auto), each requested just in time.

With pipelining (default) the selection for the next selecting epoch ``s`` is requested at the start of epoch
``s − lead`` with the proxy of the model as it stands then, where ``lead`` (>= 1) is the number of epochs the last
selection job took (its measured seconds over the last epoch's training seconds, with a margin): the freshest proxy
whose selection is still ready in time. With ``reselect_every=1`` and a selection cheaper than an epoch this is
"request epoch ``e + 1``'s selection at the start of epoch ``e``"; epoch 0's and 1's selections both use the initial
model's proxy (pushed once). ``reselect_every=0`` (auto) also sets the interval to that lead, CRAIG's ``--lag``
chosen from measurements, so selection never stalls training; ``warm_start`` trains random subsets while the run's
first selection is made instead of waiting for it. Without pipelining, a selecting epoch waits for a
selection made with the model at its start. Each selection is seeded by ``epoch_seed(seed, e)`` and streamed in
each epoch's order.

Streams are opened ahead: as soon as the next epoch's selection is known (the one being trained on, or a finished
job's), its stream is opened and its first batches are read while this epoch trains, so an epoch starts without
waiting for a stream to open.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from nessa.errors import FailedPreconditionError
from nessa.order import epoch_seed
from nessa.pipeline import Prefetch
from nessa.records import Selection
from nessa.trainer.batches import TrainBatch
from nessa.trainer.meter import EpochState
from nessa.trainer.plans.base import Plan
from nessa.trainer.selecting import SelectionJob, SelectionPipeline

__all__ = ["LEAD_MARGIN", "EpochPlan", "FullPlan"]

#: A selection is requested this much earlier than its measured time needs (the daemon also serves streams).
LEAD_MARGIN = 1.25


class EpochPlan(Plan):
    """Per-epoch selection (random, balanced, CRAIG, AdaCore, ...), pipelined, with ``reselect_every``."""

    name = "epoch"

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        self.pipeline: SelectionPipeline[Selection] = SelectionPipeline(self.fetch)
        self.next_select = 0
        self._epoch_seconds = 0.0  # training seconds of the last epoch (waits excluded)
        self._job_seconds = 0.0  # seconds of the last selection job (push + select)
        self._ahead: tuple[int, str, Prefetch[TrainBatch]] | None = None  # (epoch, selection id, stream) opened ahead
        self._warming: int | None = None  # with warm_start: the key of the first selection while it is being made
        self._next_warm: tuple[int, Selection] | None = None  # the next epoch's warm-up subset, asked for ahead

    def state_dict(self) -> dict[str, Any]:
        """The plan's resumable state.

        The selection jobs requested and not yet trained on (with their proxies), the next selecting epoch and the
        timings the lead is computed from.
        """
        return {
            "jobs": [job.to_state() for job in self.pipeline.pending_jobs()],
            "next_select": self.next_select,
            "epoch_seconds": self._epoch_seconds,
            "job_seconds": self._job_seconds,
            "warming": self._warming,
        }

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
        started = time.perf_counter()
        if job.proxy is not None and job.push:
            t.push_proxy(job.proxy)
        sel = t.select(
            method=cfg.method,
            fraction=cfg.fraction,
            seed=epoch_seed(cfg.seed, job.epoch),
            proxy_version=job.proxy_version,
        )
        self._job_seconds = time.perf_counter() - started
        return sel

    def run(self, start_epoch: int, current: EpochState | None, saved: dict[str, Any] | None) -> None:
        """Train epochs ``start_epoch ..``."""
        t = self.trainer
        cfg = t.config
        saved = saved or {}
        held: Selection | None = t.resumed_selection  # the selection being trained on (kept between reselections)
        resume_mid = held is not None and current is not None
        self._epoch_seconds = float(saved.get("epoch_seconds", 0.0))
        self._job_seconds = float(saved.get("job_seconds", 0.0))
        self._warming = saved.get("warming")
        next_select = int(saved["next_select"]) if "next_select" in saved else self._first_select(start_epoch, held)
        last_job: SelectionJob | None = None
        try:
            for state in saved.get("jobs", []):
                last_job = SelectionJob.from_state(state)
                self.pipeline.submit(last_job)
            for epoch in range(start_epoch, cfg.epochs):
                if t.stop_requested:
                    break
                state = current if current is not None and current.epoch == epoch else EpochState(epoch=epoch)
                current = None
                t0 = time.perf_counter()
                selects = epoch >= next_select and not resume_mid
                resume_mid = False
                if selects:
                    key = self._warming if self._warming is not None else epoch
                    if not self.pipeline.submitted(key):
                        last_job = self.job(key, epoch, last_job)
                        self.pipeline.submit(last_job)
                    if self._warms(key, held):
                        self._warming = key
                        ready = self._next_warm
                        held = ready[1] if ready is not None and ready[0] == epoch else self.warm_selection(epoch)
                        self._next_warm = None
                        next_select = epoch + 1  # look again next epoch
                    else:
                        self._warming = None
                        held, waited = self.pipeline.result(key)
                        t.meter.wait(state, waited, selection=True)
                        next_select = epoch + self.lag()
                    t.log_selection(epoch, held)
                self.next_select = next_select
                if (
                    cfg.pipeline
                    and self._warming is None
                    and next_select < cfg.epochs
                    and not self.pipeline.submitted(next_select)
                ):
                    if next_select - epoch <= self.lead():
                        last_job = self.job(next_select, epoch, last_job)
                        self.pipeline.submit(last_job)
                if held is None:
                    raise FailedPreconditionError(f"no selection to train epoch {epoch} on; start the run over")
                state.selected_bytes = held.selected_bytes
                state.subset_size = len(held)
                state.seconds += time.perf_counter() - t0
                self.train_selection(epoch, held, state, upcoming=partial(self._upcoming, epoch + 1, held))
                self._epoch_seconds = max(0.0, state.seconds - state.data_wait)
                keep = held if epoch + 1 < next_select else None
                t.end_epoch(state, held, self.state_dict(), keep=keep)
        finally:
            self.pipeline.close()
            self._close_ahead()

    def _warms(self, key: int, held: Selection | None) -> bool:
        """Whether this epoch trains on a random warm-up subset while the first selection (``key``) is made."""
        t = self.trainer
        cfg = t.config
        first = held is None or self._warming is not None
        return cfg.warm_start and cfg.pipeline and t.needs_proxy and first and not self.pipeline.ready(key)

    def warm_selection(self, epoch: int) -> Selection:
        """A seeded random subset of the run's budget (stateless: the method's session is untouched)."""
        cfg = self.trainer.config
        return self.trainer.select(
            method="random",
            fraction=cfg.fraction,
            seed=epoch_seed(cfg.seed, epoch) ^ 0x3A2B,
            proxy_version=None,
            options={},
            stateless=True,
        )

    def _upcoming(self, epoch: int, held: Selection) -> Selection | None:
        """The selection ``epoch`` will train on, if it is known now (without waiting for one)."""
        t = self.trainer
        if epoch >= t.config.epochs or t.stop_requested:
            return None
        if epoch < self.next_select:
            return held
        if self._warming is not None:  # the first selection if it is ready, else the next warm-up subset
            first = self.pipeline.peek(self._warming)
            if first is not None:
                return first
            self._next_warm = (epoch, self.warm_selection(epoch))
            return self._next_warm[1]
        return self.pipeline.peek(epoch)

    def _close_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead[2].close()
            self._ahead = None

    def _open(self, epoch: int, sel: Selection, position: int) -> Prefetch[TrainBatch]:
        """``sel``'s stream for ``epoch``: the one opened ahead if it is that one, else a new one."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead[0] == epoch and ahead[1] == sel.id and position == 0:
                return ahead[2]
            ahead[2].close()
        return self.trainer.stream(sel, epoch, position)

    def _open_ahead(self, epoch: int, sel: Selection) -> None:
        self._ahead = (epoch, sel.id, self.trainer.stream(sel, epoch).start())

    def _first_select(self, start_epoch: int, held: Selection | None) -> int:
        """The first selecting epoch of a run started (or resumed from an older checkpoint) at ``start_epoch``."""
        every = self.trainer.config.reselect_every
        if held is None or every <= 1:
            return start_epoch
        return start_epoch + (-start_epoch) % every

    def lag(self) -> int:
        """Epochs a selection is trained on: ``reselect_every``, or with 0 (auto) as many as it takes to make one.

        Auto is CRAIG's ``--lag`` chosen from measurements: the last selection job's seconds (push + select, as the
        pipeline's thread saw them) over the last epoch's training seconds, so the next selection is hidden behind
        training; 1 until both are known.
        """
        every = self.trainer.config.reselect_every
        return every if every >= 1 else self.lead()

    def lead(self) -> int:
        """Epochs ahead a selection must be requested to be ready in time (>= 1; 1 until measured)."""
        if self._epoch_seconds <= 0 or self._job_seconds <= 0:
            return 1
        return max(1, math.ceil(LEAD_MARGIN * self._job_seconds / self._epoch_seconds))

    def train_selection(
        self,
        epoch: int,
        sel: Selection,
        state: EpochState,
        upcoming: Callable[[], Selection | None] | None = None,
    ) -> None:
        """Stream ``sel`` in epoch ``epoch``'s order (after ``state.position`` samples) and train on it.

        ``upcoming`` says which selection the next epoch trains on once that is known; its stream is then opened
        ahead (checked after every step).
        """
        t = self.trainer
        if len(sel) == 0:
            raise FailedPreconditionError(f"the daemon returned an empty selection for epoch {epoch}")
        steps = -(-len(sel) // t.config.batch_size)
        t0 = time.perf_counter()
        if state.position < len(sel):
            batches = self._open(epoch, sel, state.position)
            try:
                for batch in batches:
                    t.meter.wait(state, batches.last_wait)
                    t.train_step(batch, state, steps)
                    t0 = t.maybe_checkpoint_mid(state, sel, self.state_dict(), t0)
                    if upcoming is not None and self._ahead is None and t.config.pipeline:
                        nxt = upcoming()
                        if nxt is not None:
                            self._open_ahead(epoch + 1, nxt)
            finally:
                batches.close()
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
