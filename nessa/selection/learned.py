"""The learned-example filter (CREST's ``--drop_learned``; NeSSA's ``drop_learned`` option).

* **Paper/code (CREST).** Per-example losses on the random sets are written into a ring buffer of
  ``watch_interval`` = 5 epoch slots; every ``drop_interval`` epochs the pool keeps the examples whose loss
  exceeded ``drop_thresh`` = 0.1 in at least one slot, plus the never-seen ones (per class; a class keeps its whole
  pool if too few remain).
* **Ours.** The window counts *observations of that example* instead of global epoch slots (with pools, a sample is
  not scored every round, and a stale slot would decide for it): an example is *learned* once its last ``window``
  observed losses were all below ``threshold``. This is kept as one streak counter per example (equivalent to a
  ring buffer of booleans and 4 bytes a sample). Never-seen examples are never learned. The policy for what to do
  with learned examples (keep a class whole if too few remain) belongs to the selector that uses the filter.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nessa.accel.reference.selection import is_int, is_real
from nessa.errors import InvalidArgumentError

__all__ = ["LearnedExampleFilter"]


class LearnedExampleFilter:
    """Tracks per-example losses and marks examples learned (loss < threshold over their last ``window`` looks).

    Args:
        window: number of consecutive observations that must all be below ``threshold`` (>= 1).
        threshold: the loss below which an observation counts as learned (finite).

    Raises:
        InvalidArgumentError: a window < 1 or a non-finite threshold.
    """

    def __init__(self, window: int, threshold: float) -> None:
        if not is_int(window) or int(window) < 1:
            raise InvalidArgumentError(f"learned window must be an int >= 1 (observations); got {window!r}")
        if not is_real(threshold) or not math.isfinite(threshold):
            raise InvalidArgumentError(f"learned threshold must be a finite loss value; got {threshold!r}")
        self.window = int(window)
        self.threshold = float(threshold)
        self._streak = np.zeros(0, dtype=np.int32)

    @property
    def size(self) -> int:
        """Number of example positions tracked so far (one past the largest index seen)."""
        return int(self._streak.size)

    def update(self, indices: np.ndarray, losses: np.ndarray) -> None:
        """Record one observation of the loss of each example in ``indices``.

        Args:
            indices: int positions of the examples (>= 0, unique).
            losses: their losses, same length, finite.

        Raises:
            InvalidArgumentError: shapes differ, negative or repeated indices, or NaN/Inf losses.
        """
        idx = np.asarray(indices)
        val = np.asarray(losses, dtype=np.float64)
        if idx.ndim != 1 or val.ndim != 1 or idx.shape != val.shape:
            raise InvalidArgumentError(
                f"indices and losses must be 1-D of the same length; got {idx.shape} and {val.shape}"
            )
        if idx.size == 0:
            return
        if not np.issubdtype(idx.dtype, np.integer):
            raise InvalidArgumentError(f"indices must be integers; got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.min() < 0:
            raise InvalidArgumentError("indices must be >= 0 (positions of the candidates)")
        if np.unique(idx).size != idx.size:
            raise InvalidArgumentError("indices repeat; give each example's loss once per update")
        if not np.all(np.isfinite(val)):
            raise InvalidArgumentError("losses hold NaN/Inf; fix the model's outputs before updating the filter")
        top = int(idx.max()) + 1
        if top > self._streak.size:
            self._streak = np.concatenate([self._streak, np.zeros(top - self._streak.size, dtype=np.int32)])
        below = val < self.threshold
        streak = self._streak[idx]
        self._streak[idx] = np.where(below, np.minimum(streak, self.window) + 1, 0).astype(np.int32)

    def learned_mask(self, n: int) -> np.ndarray:
        """Boolean mask over ``n`` positions: True where the example is learned (to be dropped).

        Args:
            n: number of candidate positions (>= 0); positions never seen are False.

        Returns:
            bool array of shape (n,).
        """
        if not is_int(n) or int(n) < 0:
            raise InvalidArgumentError(f"n must be an int >= 0; got {n!r}")
        out = np.zeros(int(n), dtype=bool)
        m = min(int(n), self._streak.size)
        out[:m] = self._streak[:m] >= self.window
        return out

    def reset(self) -> None:
        """Forget every observation."""
        self._streak = np.zeros(0, dtype=np.int32)

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of the filter (window, threshold, per-example streaks)."""
        return {"window": self.window, "threshold": self.threshold, "streak": self._streak.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot from :meth:`state_dict`.

        Raises:
            InvalidArgumentError: the snapshot is malformed or was taken with another window/threshold.
        """
        try:
            window, threshold, streak = int(state["window"]), float(state["threshold"]), state["streak"]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"bad learned-filter state ({exc}); pass what state_dict() returned") from exc
        if window != self.window or threshold != self.threshold:
            raise InvalidArgumentError(
                f"state was saved with window={window}, threshold={threshold} but this filter has "
                f"window={self.window}, threshold={self.threshold}; build the filter with the saved settings"
            )
        arr = np.asarray(streak, dtype=np.int64)
        if arr.ndim != 1 or (arr.size and arr.min() < 0):
            raise InvalidArgumentError("bad learned-filter state: streak must be a list of ints >= 0")
        self._streak = arr.astype(np.int32)
