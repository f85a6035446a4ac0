"""Baselines: ``random`` (uniform, seeded) and ``balanced`` (class-balanced random).

* ``random``: ``budget_rule="none"`` draws k of the n candidates uniformly without replacement (in draw order);
  ``"equal"`` / ``"proportional"`` draw each class's budget (:func:`nessa.selection.budget.class_budgets`)
  uniformly within the class and interleave the classes (:func:`~nessa.selection.facility_location.interleave`).
* ``balanced``: ``random`` with the ``equal`` rule (CRAIG's ceil(k/C) per class, small classes' deficits handed on).

Weights are ones; there is no objective (``nan``). The draws are a pure function of (labels, budget, seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import BUDGET_RULES, class_budgets, count_from_budget
from nessa.selection.facility_location import interleave
from nessa.selection.registry import register

__all__ = ["Balanced", "RandomSelector", "random_subset"]


def random_subset(n: int, k: int, seed: int, labels: np.ndarray | None = None, rule: str = "none") -> np.ndarray:
    """Draw ``k`` of ``n`` positions uniformly (``rule="none"``) or per class by a budget rule.

    Args:
        n: number of candidates.
        k: number to draw, in [1, n].
        seed: seed of the draw.
        labels: (n,) class labels; required unless ``rule == "none"``.
        rule: ``"none"``, ``"equal"`` or ``"proportional"``.

    Returns:
        int64 positions (unique).
    """
    rng = np.random.default_rng(seed)
    if rule == "none":
        return rng.choice(n, size=k, replace=False).astype(np.int64)
    if labels is None:
        raise InvalidArgumentError(f"budget rule {rule!r} needs labels")
    per_class = class_budgets(labels, k, rule=rule)
    orders = []
    for c in sorted(per_class):
        members = np.flatnonzero(labels == c)
        orders.append(rng.choice(members, size=per_class[c], replace=False).astype(np.int64))
    return interleave(orders)


@register
class RandomSelector(Selector):
    """Uniform random subset, optionally per class (option ``budget_rule``: none, equal, proportional)."""

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "Uniform random subset (seeded); budget_rule none/equal/proportional; weights 1"
    requires: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, Any]] = {"budget_rule": "none"}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        rule = self.config.get("budget_rule", "equal")
        if rule not in ("none", *BUDGET_RULES):
            raise InvalidArgumentError(
                f"{self.name}: option budget_rule={rule!r} is not one of {['none', *BUDGET_RULES]}"
            )
        self.rule: str = rule

    def required_inputs(self) -> tuple[str, ...]:
        """``labels`` unless the rule is ``none``."""
        return () if self.rule == "none" else ("labels",)

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        n = len(inputs)
        k = count_from_budget(n, budget)
        idx = random_subset(n, k, seed, inputs.labels, self.rule)
        return Subset(indices=idx, weights=np.ones(idx.size, dtype=np.float32))


@register
class Balanced(RandomSelector):
    """Class-balanced random subset: ceil(k/C) per class, small classes' deficits handed on (``equal`` rule)."""

    name: ClassVar[str] = "balanced"
    description: ClassVar[str] = "Class-balanced random subset (equal per-class budgets, seeded); weights 1"
    requires: ClassVar[tuple[str, ...]] = ("labels",)
    options: ClassVar[Mapping[str, Any]] = {}
