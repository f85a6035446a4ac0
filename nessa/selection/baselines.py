"""Baselines: ``random`` (uniform, seeded) and ``balanced`` (class-balanced random).

* ``random``: ``budget_rule="global"`` (default) draws k of the n candidates uniformly without replacement (in draw
  order); ``"equal"`` / ``"proportional"`` draw each class's budget (:func:`nessa.selection.budget.class_budgets`)
  uniformly within the class and interleave the classes (:func:`~nessa.selection.facility_location.interleave`).
* ``balanced``: ``random`` with the ``equal`` rule (CRAIG's ceil(k/C) per class, small classes' deficits handed on).

Weights are ones; there is no objective (``nan``). The draws are a pure function of (labels, budget, seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import BUDGET_RULES, GLOBAL, check_budget_rule, class_budgets, count_from_budget
from nessa.selection.facility_location import interleave
from nessa.selection.options import Options, option
from nessa.selection.registry import register

__all__ = ["Balanced", "BalancedOptions", "RandomOptions", "RandomSelector", "random_subset"]


def random_subset(n: int, k: int, seed: int, labels: np.ndarray | None = None, rule: str = GLOBAL) -> np.ndarray:
    """Draw ``k`` of ``n`` positions uniformly (``rule="global"``) or per class by a budget rule.

    Args:
        n: number of candidates.
        k: number to draw, in [1, n].
        seed: seed of the draw.
        labels: (n,) class labels; required unless ``rule == "none"``.
        rule: one of :data:`~nessa.selection.budget.BUDGET_RULES`: ``"global"``, ``"equal"`` or ``"proportional"``.

    Returns:
        int64 positions (unique).
    """
    rule = check_budget_rule(rule, "random_subset")
    rng = np.random.default_rng(seed)
    if rule == GLOBAL:
        return rng.choice(n, size=k, replace=False).astype(np.int64)
    if labels is None:
        raise InvalidArgumentError(f"budget rule {rule!r} needs labels")
    per_class = class_budgets(labels, k, rule=rule)
    orders = []
    for c in sorted(per_class):
        members = np.flatnonzero(labels == c)
        orders.append(rng.choice(members, size=per_class[c], replace=False).astype(np.int64))
    return interleave(orders)


@dataclass(frozen=True)
class RandomOptions(Options):
    """``random``'s options."""

    budget_rule: str = option(
        GLOBAL, "choice", choices=BUDGET_RULES, help="global (uniform over all), or equal/proportional per class"
    )


@dataclass(frozen=True)
class BalancedOptions(Options):
    """``balanced`` has no options (it is ``random`` with the ``equal`` rule)."""


@register
class RandomSelector(Selector):
    """Uniform random subset, optionally per class (option ``budget_rule``: global, equal, proportional)."""

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "Uniform random subset (seeded); budget_rule global/equal/proportional; weights 1"
    Options: ClassVar[type[Options]] = RandomOptions

    @classmethod
    def rule_of(cls, opts: Any) -> str:
        """The budget rule the options ask for."""
        return str(opts.budget_rule)

    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """``labels`` unless the rule is ``global``."""
        return () if cls.rule_of(opts) == GLOBAL else ("labels",)

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        n = len(inputs)
        k = count_from_budget(n, budget)
        idx = random_subset(n, k, seed, inputs.labels, self.rule_of(self.opts))
        return Subset(indices=idx, weights=np.ones(idx.size, dtype=np.float32))


@register
class Balanced(RandomSelector):
    """Class-balanced random subset: ceil(k/C) per class, small classes' deficits handed on (``equal`` rule)."""

    name: ClassVar[str] = "balanced"
    description: ClassVar[str] = "Class-balanced random subset (equal per-class budgets, seeded); weights 1"
    Options: ClassVar[type[Options]] = BalancedOptions

    @classmethod
    def rule_of(cls, opts: Any) -> str:
        """Always ``equal``."""
        del opts
        return "equal"
