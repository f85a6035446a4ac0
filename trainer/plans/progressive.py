"""Progressive training on distilled stages (PDD's ``evaluate_mtt.py`` protocol), streamed from the daemon.

The training dataset is a distilled group (``nessa distill``): its manifest lists P stages in order, each with
its learned learning rate, and the group holds their samples in stage order, so the union of stages 1..i is the
index prefix ``[0, end_i)``. ``--epochs`` is split evenly over the stages; phase i streams that prefix every epoch
and trains with stage i's learned lr (×0.1 from epoch ``E_i/2 + 1`` of the phase), with the same model and
optimizer throughout, so weights and momentum carry from phase to phase. The model is evaluated on the real test
set after every epoch (each epoch's record says its stage); no proxy is pushed: there is nothing to select.
``--lr`` is not used: each stage brings its own.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nessa.distill.store import StageInfo, group_stages
from nessa.errors import InvalidArgumentError
from nessa.records import Selection
from nessa.trainer.meter import EpochState
from nessa.trainer.plans.base import Plan

__all__ = ["ProgressivePlan", "StageSchedule"]


class StageSchedule:
    """The learning rate of progressive training: stage i's learned lr, ×0.1 in the second half of its phase."""

    def __init__(self, lrs: list[float], epochs_per_stage: int) -> None:
        self.lrs = lrs
        self.per_stage = epochs_per_stage

    def stage_of(self, epoch: int) -> int:
        """0-based stage that ``epoch`` trains."""
        return min(epoch // self.per_stage, len(self.lrs) - 1)

    def lr_for_step(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The lr of every step of ``epoch`` (the signature of :class:`nessa.trainer.schedule.LRSchedule`)."""
        stage = self.stage_of(epoch)
        local = epoch - stage * self.per_stage
        return self.lrs[stage] * (0.1 if local >= self.per_stage // 2 + 1 else 1.0)


class ProgressivePlan(Plan):
    """Train on the union of stages 1..i with stage i's learned lr, for i = 1..P, carrying the optimizer."""

    name = "progressive"

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        cfg = trainer.config
        if cfg.method != "full":
            raise InvalidArgumentError(
                f"the progressive plan trains on every sample of the distilled stages; drop --method {cfg.method}"
            )
        self.stages: list[StageInfo] = group_stages(trainer.info.source, f"dataset {cfg.dataset!r}")
        if cfg.epochs % len(self.stages):
            raise InvalidArgumentError(
                f"--epochs {cfg.epochs} does not split over the {len(self.stages)} stages of {cfg.dataset}; give a "
                f"multiple of {len(self.stages)} (epochs per stage × stages)"
            )
        self.schedule = StageSchedule([s.learned_lr for s in self.stages], cfg.epochs // len(self.stages))
        trainer.schedule = self.schedule
        self._selections: dict[int, Selection] = {}

    def steps_per_epoch(self) -> int:
        """Steps of the last phase's epochs (the largest union)."""
        end = self.stages[-1].offset + self.stages[-1].count
        return max(1, -(-end // self.trainer.config.batch_size))

    def union(self, stage: int) -> Selection:
        """Every sample of stages 1..``stage + 1`` (a prefix of the group), asked for once per stage."""
        sel = self._selections.get(stage)
        if sel is None:
            end = self.stages[stage].offset + self.stages[stage].count
            sel = self.trainer.select(
                method="random", fraction=1.0, seed=0, proxy_version=None, stateless=True, candidates=np.arange(end)
            )
            self._selections[stage] = sel
        return sel

    def run(self, start_epoch: int, current: EpochState | None, saved: dict[str, Any] | None) -> None:
        """Train epochs ``start_epoch ..``, each on its stage's union."""
        t = self.trainer
        cfg = t.config
        for epoch in range(start_epoch, cfg.epochs):
            if t.stop_requested:
                break
            state = current if current is not None and current.epoch == epoch else EpochState(epoch=epoch)
            current = None
            stage = self.schedule.stage_of(epoch)
            sel = self.union(stage)
            if not state.step:
                t.log_selection(epoch, sel)
            state.selected_bytes = sel.selected_bytes
            state.subset_size = len(sel)
            steps = -(-len(sel) // cfg.batch_size)
            t0 = time.perf_counter()
            if state.position < len(sel):
                with t.stream(sel, epoch, state.position) as batches:
                    for batch in batches:
                        t.meter.wait(state, batches.last_wait)
                        t.train_step(batch, state, steps)
                        t0 = t.maybe_checkpoint_mid(state, sel, {}, t0)
            state.seconds += time.perf_counter() - t0
            last_of_stage = epoch == (stage + 1) * self.schedule.per_stage - 1
            extra = {"stage": stage + 1, "stage_lr": self.schedule.lrs[stage], "stage_end": last_of_stage}
            t.end_epoch(state, sel, {}, extra=extra)
            if last_of_stage:
                acc = t.meter.history[-1].get("test_accuracy") if t.meter.history else None
                t.say(
                    f"progressive: stage {stage + 1}/{len(self.stages)} done ({len(sel)} samples, lr "
                    f"{self.schedule.lrs[stage]:.4g})"
                    + (f": test accuracy {acc * 100:.2f} %" if acc is not None else "")
                )
