"""InfoBatch as its code runs it: the trainer prunes well-learned samples by their last training loss.

Each epoch before ``infobatch_delta · epochs`` the plan prunes with :func:`nessa.selection.infobatch.prune` on its
score table (every sample's last unweighted training loss, 3 before its first), streams the kept samples from the
daemon by their indices (in the epoch's seeded order), trains with their weights (1 / keep ratio for the kept
well-learned ones, 1 for the rest) and writes the losses it computed back into the table. Later epochs train on
every sample with weight 1 (annealing). The keep ratio of well-learned samples is the run's ``fraction``
(``1 − r``; the code's default ``r = 0.5`` is ``fraction=0.5``).

The losses are the trainer's own (the code's ``dataset.update(loss)``), so no proxy is pushed and the storage node
does no forward pass; only the kept samples cross the link.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from nessa.order import epoch_seed
from nessa.records import Selection
from nessa.selection.infobatch import InfoBatchScores, keep_ratio_of, prune
from nessa.trainer.meter import EpochState
from nessa.trainer.plans.base import Plan

__all__ = ["InfoBatchPlan"]


class InfoBatchPlan(Plan):
    """InfoBatch (Qin et al., 2024); see the module docstring."""

    name = "infobatch"

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        self.table = InfoBatchScores(trainer.info.num_samples)
        self.keep_ratio = keep_ratio_of(1.0 - float(trainer.config.fraction))
        self._current: tuple[int, Selection] | None = None  # the epoch in progress and what it trains on

    def state_dict(self) -> dict[str, Any]:
        """The score table, and the epoch in progress's samples and weights (a mid-epoch resume trains on them)."""
        out = self.table.state_dict()
        if self._current is not None:
            epoch, sel = self._current
            out.update(epoch=epoch, indices=sel.indices.copy(), weights=sel.weights.copy())
        return out

    def steps_per_epoch(self) -> int:
        """At most a full epoch's steps (pruned epochs have fewer)."""
        t = self.trainer
        return max(1, -(-t.info.num_samples // t.config.batch_size))

    def prunes(self, epoch: int) -> bool:
        """Whether ``epoch`` is pruned (the code prunes while its epoch counter is at most ``delta · epochs``)."""
        cfg = self.trainer.config
        return epoch <= cfg.epochs * cfg.infobatch_delta

    def epoch_selection(self, epoch: int) -> Selection:
        """What ``epoch`` trains on: the pruned set with its weights, or every sample with weight 1."""
        t = self.trainer
        n = t.info.num_samples
        seed = epoch_seed(t.config.seed, epoch)
        if self.prunes(epoch):
            idx, w = prune(self.table.scores, self.keep_ratio, seed)
        else:
            idx, w = np.arange(n, dtype=np.int64), np.ones(n, dtype=np.float32)
        kept = {"pruned": n - idx.size, "annealing": not self.prunes(epoch)}
        return Selection(id="", dataset=t.config.dataset, method="infobatch", indices=idx, weights=w,
                         num_candidates=n, extras=kept)  # fmt: skip

    def run(self, start_epoch: int, current: EpochState | None, saved: dict[str, Any] | None) -> None:
        """Train epochs ``start_epoch ..``."""
        t = self.trainer
        resumed: Selection | None = None
        if saved:
            self.table.load_state_dict(saved)
            if current is not None and saved.get("epoch") == current.epoch and "indices" in saved:
                resumed = self.epoch_selection(current.epoch)
                resumed.indices, resumed.weights = np.asarray(saved["indices"]), np.asarray(saved["weights"])
        for epoch in range(start_epoch, t.config.epochs):
            if t.stop_requested:
                break
            state = current if current is not None and current.epoch == epoch else EpochState(epoch=epoch)
            current = None
            sel = resumed if resumed is not None and resumed_epoch(state, epoch) else self.epoch_selection(epoch)
            resumed = None
            self._current = (epoch, sel)
            t.log_selection(epoch, sel)
            state.subset_size = len(sel)
            steps = max(1, math.ceil(len(sel) / t.config.batch_size))
            t0 = time.perf_counter()
            if state.position < len(sel):
                batches = t.stream(sel, epoch, state.position)
                try:
                    for batch in batches:
                        t.meter.wait(state, batches.last_wait)
                        losses = t.train_step(batch, state, steps)
                        self.table.update(batch.indices, losses.cpu().numpy())
                        t0 = t.maybe_checkpoint_mid(state, sel, self.state_dict(), t0)
                finally:
                    batches.close()
            state.seconds += time.perf_counter() - t0
            self._current = None
            extra = {"pruned": sel.extras["pruned"], "annealing": sel.extras["annealing"]}
            t.end_epoch(state, sel, self.state_dict(), extra=extra)


def resumed_epoch(state: EpochState, epoch: int) -> bool:
    """Whether ``state`` is a resumed, partly trained ``epoch``."""
    return state.epoch == epoch and state.position > 0
