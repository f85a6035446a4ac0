"""InfoBatch: unbiased dynamic pruning of well-learned samples (Qin et al., ICLR 2024).

* **Paper and code** (``NUS-HPC-AI-Lab/InfoBatch``, ``infobatch/infobatch.py``). Every sample has a score, its last
  training loss (3 before it was first trained on). Each epoch, the samples whose score is below the mean score are
  *well learned*; a random ``keep_ratio`` of them is kept (``int(keep_ratio · count)``, ``keep_ratio = 1 − r``
  clipped to [0.1, 1]) with weight ``1 / keep_ratio`` so the expected gradient is unchanged; every other sample is
  kept with weight 1. The epoch trains on the kept samples in a random order and their losses, unweighted, become
  their new scores. In the last ``1 − δ`` of the epochs (``δ = 0.875``) nothing is pruned and weights are 1
  (annealing).
* **Ours.** :class:`InfoBatchScores` is the score table and the pruning rule (a pure function of the scores and the
  seed); the selector ``infobatch`` applies the rule to per-sample losses given as ``losses`` (the budget's
  fraction is the keep ratio of the well-learned samples), so a daemon with a proxy can run it too. The trainer's
  ``infobatch`` plan keeps the table itself and feeds it the losses it computes while training, as the code does:
  no proxy and no forward pass on the storage node, only the kept samples cross the link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import count_from_budget
from nessa.selection.options import Options
from nessa.selection.registry import register

__all__ = ["INITIAL_SCORE", "InfoBatch", "InfoBatchOptions", "InfoBatchScores", "keep_ratio_of", "prune"]

#: The score of a sample never trained on (the code's ``torch.ones(n) * 3``).
INITIAL_SCORE = 3.0
#: The code clips the keep ratio to at least this.
MIN_KEEP_RATIO = 0.1


def keep_ratio_of(prune_ratio: float) -> float:
    """The code's keep ratio for a prune ratio ``r``: ``1 − r`` clipped to [0.1, 1]."""
    if not 0.0 <= float(prune_ratio) <= 1.0:
        raise InvalidArgumentError(f"infobatch: prune ratio must be in [0, 1]; got {prune_ratio!r}")
    return min(1.0, max(MIN_KEEP_RATIO, 1.0 - float(prune_ratio)))


def prune(scores: np.ndarray, keep_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's InfoBatch pruning: ``(indices in a random order, float32 weights)`` from the scores.

    ``int(keep_ratio · count)`` of the well-learned samples (score below the mean) are kept at random, with weight
    ``1 / keep_ratio``; the others are all kept, with weight 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
        raise InvalidArgumentError("infobatch: scores must be a non-empty 1-D array of finite losses")
    if not MIN_KEEP_RATIO <= keep_ratio <= 1.0:
        raise InvalidArgumentError(f"infobatch: keep ratio must be in [{MIN_KEEP_RATIO}, 1]; got {keep_ratio!r}")
    rng = np.random.default_rng(seed)
    well = np.flatnonzero(s < s.mean())
    rest = np.flatnonzero(~(s < s.mean()))
    kept_well = rng.choice(well, size=int(keep_ratio * well.size), replace=False) if well.size else well
    indices = np.concatenate([rest, kept_well]).astype(np.int64)
    weights = np.concatenate([np.ones(rest.size), np.full(kept_well.size, 1.0 / keep_ratio)]).astype(np.float32)
    order = rng.permutation(indices.size)
    return indices[order], weights[order]


class InfoBatchScores:
    """The per-sample score table of a run (last training loss; :data:`INITIAL_SCORE` before the first)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise InvalidArgumentError(f"infobatch: need at least one sample; got {n}")
        self.scores = np.full(int(n), INITIAL_SCORE, dtype=np.float32)

    def update(self, indices: np.ndarray, losses: np.ndarray) -> None:
        """Record the unweighted training losses of the samples at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        val = np.asarray(losses, dtype=np.float32).reshape(-1)
        if idx.size != val.size:
            raise InvalidArgumentError(f"infobatch: {idx.size} indices but {val.size} losses")
        if idx.size and (idx.min() < 0 or idx.max() >= self.scores.size):
            raise InvalidArgumentError(f"infobatch: indices must be in [0, {self.scores.size})")
        self.scores[idx] = val

    def state_dict(self) -> dict[str, Any]:
        """The table (for a checkpoint)."""
        return {"scores": self.scores.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        scores = np.asarray(state["scores"], dtype=np.float32)
        if scores.shape != self.scores.shape:
            raise InvalidArgumentError(f"infobatch: saved scores of {scores.size} samples, not {self.scores.size}")
        self.scores = scores.copy()


@dataclass(frozen=True)
class InfoBatchOptions(Options):
    """``infobatch`` has no options: the budget's fraction is the keep ratio of the well-learned samples."""


@register
class InfoBatch(Selector):
    """InfoBatch's pruning rule on given per-sample losses (``losses``); the budget fraction is the keep ratio."""

    name: ClassVar[str] = "infobatch"
    description: ClassVar[str] = (
        "InfoBatch (ICLR 2024): keep every sample at or above the mean loss and a random budget-fraction of the "
        "rest, weighted 1/fraction (unbiased); the trainer's infobatch plan feeds it training losses"
    )
    Options: ClassVar[type[Options]] = InfoBatchOptions

    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """Per-sample losses."""
        del opts
        return ("losses",)

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        count_from_budget(len(inputs), budget)  # the budget checks every method makes
        if not isinstance(budget, float) or not MIN_KEEP_RATIO <= budget <= 1.0:
            raise InvalidArgumentError(
                f"infobatch: give the keep ratio of well-learned samples as a fraction in [{MIN_KEEP_RATIO}, 1] "
                f"(1 − the paper's prune ratio r); got {budget!r}"
            )
        assert inputs.losses is not None
        idx, w = prune(inputs.losses, float(budget), seed)
        return Subset(indices=idx, weights=w, extras={"kept": int(idx.size), "of": len(inputs)})
