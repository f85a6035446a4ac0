"""RS2: repeated random sampling without replacement across epochs (Okanovic et al., ICLR 2024).

* **Paper.** Each round trains on a random subset of the budget drawn *without replacement across rounds*: a random
  order of the whole set is consumed a budget at a time, so every sample is seen once before any repeats, then a new
  order is drawn. The learning-rate schedule is stated over the reduced number of steps (the trainer's job).
* **Ours.** The selector keeps the order's base seed, its cycle number and the cursor in its state (a few numbers
  and, after a round that crossed into a new order, that round's tail of the old one), so a daemon session persists
  it cheaply and the order is regenerated from them. A round that crosses the end of an order takes the rest of it
  and the start of the next order, which is drawn to begin with samples outside that rest: a round never repeats a
  sample, and the rounds in order are whole permutations one after another. Weights are ones. Stateless use (a
  fresh instance per call) degenerates to one random subset per seed: give the daemon a session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import count_from_budget
from nessa.selection.options import Options
from nessa.selection.registry import register

__all__ = ["RS2", "RS2Options"]


@dataclass(frozen=True)
class RS2Options(Options):
    """``rs2`` has no options: its state (order, cursor) lives in the selection session."""


@register
class RS2(Selector):
    """Random subsets without replacement across calls: every candidate once before any repeats (RS2)."""

    name: ClassVar[str] = "rs2"
    description: ClassVar[str] = (
        "RS2 (ICLR 2024): random subsets without replacement across rounds (every sample once before repeats); "
        "needs a session; weights 1"
    )
    Options: ClassVar[type[Options]] = RS2Options

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._n = 0
        self._base_seed: int | None = None
        self._cycle = 0
        self._cursor = 0
        self._avoid: list[int] = []  # the previous order's tail, taken in the round that crossed into this order
        self._head = 0  # how many of this order's samples that round took (none of them in the tail)

    def state_dict(self) -> dict[str, Any]:
        """The order's base seed, cycle, cursor and boundary tail (and the number of candidates they are for)."""
        if self._base_seed is None:
            return {}
        return {"n": self._n, "base_seed": self._base_seed, "cycle": self._cycle, "cursor": self._cursor,
                "avoid": list(self._avoid), "head": self._head}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the order of an earlier instance."""
        if not state:
            return
        try:
            n, seed, cycle, cursor = (int(state[k]) for k in ("n", "base_seed", "cycle", "cursor"))
            avoid = [int(i) for i in state.get("avoid", [])]
            head = int(state.get("head", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"rs2: malformed state {dict(state)!r}: {exc}") from exc
        if min(n, seed, cycle, cursor) < 0 or cursor > n or not 0 <= head <= n or any(not 0 <= i < n for i in avoid):
            raise InvalidArgumentError(f"rs2: state out of range: {dict(state)!r}")
        self._n, self._base_seed, self._cycle, self._cursor, self._avoid = n, seed, cycle, cursor, avoid
        self._head = head

    def _order(self) -> np.ndarray:
        """The current cycle's order: a seeded permutation whose first ``head`` elements avoid the previous tail.

        ``head`` is what the crossing round took from this order (its start up to the cursor, when the crossing
        round was the last call), so a round never holds a sample twice and the rounds, concatenated, are a
        sequence of whole permutations.
        """
        assert self._base_seed is not None
        perm = np.random.default_rng([self._base_seed, self._cycle]).permutation(self._n).astype(np.int64)
        if not self._avoid:
            return perm
        free = perm[~np.isin(perm, np.asarray(self._avoid, dtype=np.int64))]
        first = free[: self._head]
        return np.concatenate([first, perm[~np.isin(perm, first)]])

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        n = len(inputs)
        k = count_from_budget(n, budget)
        if self._base_seed is None or self._n != n:  # first call (or a different candidate set): a new order
            self._n, self._base_seed, self._cycle, self._cursor, self._avoid, self._head = n, int(seed), 0, 0, [], 0
        take = self._order()[self._cursor : self._cursor + k]
        self._cursor += take.size
        if take.size < k:  # the order is used up: the round continues in the next order, which avoids this tail
            self._cycle += 1
            self._avoid, self._head = take.tolist(), k - take.size
            self._cursor = self._head
            take = np.concatenate([take, self._order()[: self._cursor]])
        if self._cursor == n:
            self._cycle, self._cursor, self._avoid, self._head = self._cycle + 1, 0, [], 0
        return Subset(
            indices=take,
            weights=np.ones(take.size, dtype=np.float32),
            extras={"cycle": self._cycle, "cursor": self._cursor},
        )
