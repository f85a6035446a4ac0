"""Budget rules: a fraction or a count of candidates → a sample count, and a count → per-class budgets.

* :func:`count_from_budget`: a float in (0, 1] is a fraction, rounded **half up** on its decimal value (the
  float's shortest ``repr``, so ``0.15 · 10`` is 1.5 → 2, not 1.4999… → 1), and at least 1; an int in [1, n] is a
  count. Anything else is an :class:`~nessa.errors.InvalidArgumentError` that says the valid range.
* :func:`class_budgets` with ``rule="equal"`` (CRAIG/CREST/augmentation ``equal_num=True``): every class is
  offered t = ceil(k/C) (so the total target is min(C·t, N), at most C − 1 above k, as in the papers' code). A
  class smaller than t gives all it has, and its deficit is handed on to the classes that still have room by
  water-filling: every class gets min(n_c, L) for the largest level L that keeps the total ≤ the target, and what
  is left (fewer than the number of classes with room) goes one each to the classes with room in ascending label
  order. The reference code instead divides the deficit by the number of *minority* classes, which can over- or
  under-shoot; we do not copy that quirk.
* ``rule="proportional"`` (CRAIG ``equal_num=False``, AdaCore): k_c = ceil(n_c·k/N), computed in exact integer
  arithmetic. Every class gets at least 1 and never more than n_c; the total T satisfies k ≤ T ≤ k + C' − 1,
  where C' ≤ C is the number of classes whose share n_c·k/N is not an integer.
* :func:`largest_remainder` splits a count exactly (the total is exactly k) in proportion to sizes, for budgets
  split across partitions; :func:`partition_class_budgets` splits a budget over partitions and then classes so the
  total is exactly k (the ceil overshoot of each partition trimmed by :func:`trim_to_total`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from nessa.accel.reference.selection import is_int, is_real
from nessa.errors import InvalidArgumentError

if TYPE_CHECKING:
    from nessa.selection.base import SelectionInputs, Selector, Subset

__all__ = [
    "BUDGET_RULES",
    "GLOBAL",
    "PER_CLASS_RULES",
    "check_budget_rule",
    "class_budgets",
    "count_from_budget",
    "largest_remainder",
    "partition_class_budgets",
    "select_with_budget_rule",
    "trim_to_total",
]

#: The budget over all candidates at once, not split by class (the selector's own class handling applies).
GLOBAL = "global"
#: Per-class budget rules understood by :func:`class_budgets`.
PER_CLASS_RULES = ("equal", "proportional")
#: The one ``budget_rule`` vocabulary: the Select request's field, :func:`select_with_budget_rule`, ``random``'s and
#: ``craig``'s option.
BUDGET_RULES = (GLOBAL, *PER_CLASS_RULES)


def count_from_budget(n: int, budget: float | int) -> int:
    """Turn a budget into a number of samples out of ``n`` candidates.

    Args:
        n: number of candidates (>= 1).
        budget: a fraction in (0, 1] (float) or a count in [1, n] (int).

    Returns:
        The count: ``max(1, round_half_up(budget * n))`` for a fraction, ``budget`` for a count.

    Raises:
        InvalidArgumentError: ``n < 1``, a fraction outside (0, 1], a count outside [1, n], or a non-number.
    """
    if not is_int(n) or int(n) < 1:
        raise InvalidArgumentError(f"the number of candidates must be an int >= 1; got {n!r} (nothing to select from)")
    n = int(n)
    if not is_real(budget):
        raise InvalidArgumentError(
            f"budget must be a fraction in (0, 1] (float) or a count in [1, {n}] (int); got {budget!r}"
        )
    if is_int(budget):
        count = int(budget)
        if not 1 <= count <= n:
            raise InvalidArgumentError(
                f"budget count {count} is outside [1, {n}]; ask for between 1 and {n} samples "
                f"or pass a fraction in (0, 1]"
            )
        return count
    frac = float(budget)
    if not math.isfinite(frac) or not 0.0 < frac <= 1.0:
        raise InvalidArgumentError(
            f"budget fraction {frac!r} is outside (0, 1]; pass a fraction in (0, 1] or an int count in [1, {n}]"
        )
    count = int((Decimal(repr(frac)) * n).to_integral_value(rounding=ROUND_HALF_UP))
    return min(n, max(1, count))


def _class_sizes(labels: np.ndarray | Sequence[int], classes: Iterable[int] | None) -> tuple[list[int], list[int]]:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"labels must be 1-D (one per sample); got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidArgumentError("labels are empty: there are no samples to budget over")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InvalidArgumentError(f"labels must be integers; got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    present, counts = np.unique(arr, return_counts=True)
    sizes = {int(c): int(s) for c, s in zip(present, counts, strict=True)}
    if classes is None:
        keys = sorted(sizes)
    else:
        keys = sorted({int(c) for c in classes})
        missing = [c for c in keys if c not in sizes]
        if missing:
            raise InvalidArgumentError(
                f"class(es) {missing} were requested but have no samples; drop them from the requested classes "
                f"(classes with samples: {sorted(sizes)})"
            )
        if not keys:
            raise InvalidArgumentError("no classes requested; pass at least one class that has samples")
    return keys, [sizes[c] for c in keys]


def class_budgets(
    labels: np.ndarray | Sequence[int],
    k: int,
    rule: str = "equal",
    classes: Iterable[int] | None = None,
) -> dict[int, int]:
    """Split a budget of ``k`` samples over the classes in ``labels`` (see the module docstring for the rules).

    Args:
        labels: class label per candidate.
        k: total budget, an int in [1, N] where N is the number of candidates in the considered classes.
        rule: ``"equal"`` (ceil(k/C) per class, deficits of small classes handed on) or ``"proportional"``
            (ceil(n_c·k/N)).
        classes: restrict to these classes (each must have samples); default every class in ``labels``.

    Returns:
        Class label → budget, for every considered class, each in [0, n_c] (``proportional``: in [1, n_c]).

    Raises:
        InvalidArgumentError: an unknown rule, ``k`` outside [1, N], or a requested class without samples.
    """
    if rule not in PER_CLASS_RULES:
        raise InvalidArgumentError(f"unknown per-class budget rule {rule!r}; use one of {list(PER_CLASS_RULES)}")
    keys, sizes = _class_sizes(labels, classes)
    total = sum(sizes)
    if not is_int(k) or not 1 <= int(k) <= total:
        raise InvalidArgumentError(f"class budget total k={k!r} must be an int in [1, {total}] (the candidates)")
    k = int(k)
    if rule == "proportional":
        return {c: (n_c * k + total - 1) // total for c, n_c in zip(keys, sizes, strict=True)}
    num = len(keys)
    target = min(num * (-(-k // num)), total)
    # Water-filling: the largest level L with sum(min(n_c, L)) <= target, then the remainder one each.
    lo, hi = 0, max(sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes) <= target:
            lo = mid
        else:
            hi = mid - 1
    out = {c: min(s, lo) for c, s in zip(keys, sizes, strict=True)}
    left = target - sum(out.values())
    for c, s in zip(keys, sizes, strict=True):
        if left == 0:
            break
        if s > out[c]:
            out[c] += 1
            left -= 1
    return out


def trim_to_total(budgets: Mapping[int, int], total: int, rotation: int = 0) -> dict[int, int]:
    """Lower per-class budgets one at a time until they sum to ``total`` (the ceil rules' overshoot removed).

    Each step takes one from a class with the largest budget; among those, the first class in label order counting
    from position ``rotation`` (mod the number of classes), so callers that trim several splits (one per partition)
    can pass the partition's number and spread the cuts over the classes instead of always cutting the same ones.

    Args:
        budgets: class → budget (>= 0).
        total: the wanted sum, in [0, sum(budgets)].
        rotation: where in label order the tie-break starts.

    Returns:
        A new dict with the same keys summing to exactly ``total`` (each budget at most its old value).

    Raises:
        InvalidArgumentError: a total above the sum of the budgets or below 0.
    """
    out = {int(c): int(v) for c, v in budgets.items()}
    surplus = sum(out.values()) - int(total)
    if surplus < 0 or total < 0:
        raise InvalidArgumentError(f"cannot trim budgets summing to {sum(out.values())} to {total}")
    keys = sorted(out)
    if not keys:
        return out
    start = int(rotation) % len(keys)
    rank = {c: (i - start) % len(keys) for i, c in enumerate(keys)}
    while surplus > 0:
        c = min(keys, key=lambda key: (-out[key], rank[key]))
        out[c] -= 1
        surplus -= 1
        rank[c] += len(keys)  # a class just cut goes behind the other tied ones
    return out


def partition_class_budgets(
    labels: np.ndarray | Sequence[int], partitions: Sequence[np.ndarray], k: int, rule: str = "equal"
) -> list[dict[int, int]]:
    """Per-partition, per-class budgets that sum to exactly ``k`` (NeSSA's ``pool="partitions"``).

    ``k`` is split over the partitions in proportion to their sizes (:func:`largest_remainder`, exact), then each
    partition's share over its classes: ``equal`` is :func:`class_budgets`' ceil(share/C) with the deficits handed
    on, its overshoot trimmed back to the share from the largest budgets (:func:`trim_to_total`; among tied classes
    the cuts go on in label order from where the previous partition's stopped, so over all partitions every class
    is cut about equally often), which is the same water-filling at exactly the share;
    ``proportional`` is :func:`largest_remainder` over the class sizes (floor plus the largest remainders: the ceil
    rule without its overshoot; a class whose share is below one may get 0). So the total is exactly ``k`` for any
    class and partition count.

    Args:
        labels: class label per candidate.
        partitions: positions into ``labels``, one array per partition (disjoint).
        k: the total budget, in [1, number of positions in the partitions].
        rule: ``"equal"`` or ``"proportional"``.

    Returns:
        One class → budget dict per partition (empty for a partition whose share is 0).
    """
    arr = np.asarray(labels)
    sizes = [int(np.asarray(p).size) for p in partitions]
    if not is_int(k) or not 1 <= int(k) <= sum(sizes):
        raise InvalidArgumentError(f"partition budget total k={k!r} must be an int in [1, {sum(sizes)}]")
    shares = largest_remainder(int(k), sizes)
    out: list[dict[int, int]] = []
    cuts = 0  # cuts made so far: the next partition's cuts start where the last one's stopped
    for pool, share in zip(partitions, shares, strict=True):
        if share == 0:
            out.append({})
            continue
        members = arr[np.asarray(pool, dtype=np.int64)]
        if rule == "proportional":
            keys, counts = np.unique(members, return_counts=True)
            parts = largest_remainder(share, [int(v) for v in counts])
            out.append({int(c): v for c, v in zip(keys, parts, strict=True)})
        else:
            full = class_budgets(members, share, rule=rule)
            out.append(trim_to_total(full, share, rotation=cuts))
            cuts += sum(full.values()) - share
    return out


def largest_remainder(k: int, sizes: Sequence[int] | Mapping[int, int]) -> list[int]:
    """Split ``k`` in proportion to ``sizes`` so the parts sum to exactly ``min(k, sum(sizes))``.

    Each part is floor(k·s/S) plus one for the largest remainders (ties: the earlier part), never above its size.

    Args:
        k: the count to split (>= 0).
        sizes: the size of each part (>= 0); a mapping's values in iteration order.

    Returns:
        One count per part, in order.

    Raises:
        InvalidArgumentError: a negative ``k`` or size.
    """
    values = [int(v) for v in (sizes.values() if isinstance(sizes, Mapping) else sizes)]
    if k < 0 or any(v < 0 for v in values):
        raise InvalidArgumentError(f"largest_remainder needs k >= 0 and sizes >= 0; got k={k}, sizes={values}")
    total = sum(values)
    k = min(int(k), total)
    if total == 0:
        return [0 for _ in values]
    base = [k * v // total for v in values]
    rema = [k * v - b * total for v, b in zip(values, base, strict=True)]
    left = k - sum(base)
    order = sorted(range(len(values)), key=lambda i: (-rema[i], i))
    for i in order:
        if left == 0:
            break
        if base[i] < values[i]:
            base[i] += 1
            left -= 1
    return base


def check_budget_rule(rule: Any, owner: str = "budget_rule") -> str:
    """Validate a ``budget_rule`` (one of :data:`BUDGET_RULES`; ``""`` means ``global``) and return it.

    Raises:
        InvalidArgumentError: any other value (``"none"`` names its replacement, ``"global"``).
    """
    if rule == "":
        return GLOBAL
    if rule in BUDGET_RULES:
        return str(rule)
    hint = " ('none' is now called 'global')" if rule == "none" else ""
    raise InvalidArgumentError(f"{owner}: unknown budget rule {rule!r}; use one of {list(BUDGET_RULES)}{hint}")


def select_with_budget_rule(
    method: str,
    inputs: SelectionInputs,
    budget: float | int,
    rule: str = GLOBAL,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    *,
    selector_for: Callable[[int | None], Selector] | None = None,
    check: Callable[[], None] | None = None,
) -> Subset:
    """Run selector ``method`` under a budget rule: once over all candidates, or once per class on its own budget.

    This is what a Select request's ``budget_rule`` does. ``global``: one selector, the whole budget, all candidates.
    ``equal`` / ``proportional``: the budget's count k is split over the classes by :func:`class_budgets` (``equal``:
    ceil(k/C) per class with the deficits of small classes handed on; ``proportional``: ceil(n_c·k/N)), and a
    selector runs on each class's candidates alone (classes in ascending label order, each with the same ``seed``,
    a class with budget 0 skipped). The subsets are concatenated in class order, each keeping its own weights;
    the objective is the sum of the finite per-class objectives (``nan`` when none is finite).

    Every class gets its **own** selector (``selector_for(c)``; by default a fresh ``create(method, **options)``),
    so no state (AdaCore's moving averages, a learned-example filter) leaks from one class into the next. A caller
    that keeps selector state across calls (a selection session) passes ``selector_for`` returning that class's
    instance (``None`` for ``global``).

    Args:
        method: the selector's registry name.
        inputs: the candidates' inputs (``labels`` are needed for a per-class rule).
        budget: a fraction in (0, 1] or a count in [1, n] of all candidates.
        rule: one of :data:`BUDGET_RULES`.
        seed: the selectors' seed.
        options: the selector's options.
        selector_for: class label (``None`` for ``global``) → the selector to run for it.
        check: called before each class's selection (e.g. a cancellation check that raises).

    Returns:
        The :class:`~nessa.selection.base.Subset` (indices into ``inputs``); ``extras`` holds ``budget_rule`` and,
        per class, ``class_budgets``.

    Raises:
        InvalidArgumentError: an unknown method, option or rule, a bad budget, or a per-class rule without labels.
    """
    from nessa.selection.base import SelectionInputs, Subset
    from nessa.selection.registry import create

    rule = check_budget_rule(rule)
    opts = dict(options or {})

    def fresh(_: int | None) -> Selector:
        return create(method, **opts)

    make = selector_for or fresh
    if rule == GLOBAL:
        if check is not None:
            check()
        subset = make(None).select(inputs, budget, seed)
        subset.extras = {**subset.extras, "budget_rule": GLOBAL}
        return subset
    labels = inputs.labels
    if labels is None:
        raise InvalidArgumentError(f"budget rule {rule!r} splits the budget by class and needs labels; pass labels")
    start = time.perf_counter()
    k = count_from_budget(len(labels), budget)
    shares = class_budgets(labels, k, rule=rule)
    idx_parts: list[np.ndarray] = []
    w_parts: list[np.ndarray] = []
    objective = 0.0
    has_objective = False
    config: dict[str, Any] = {}
    for c in sorted(shares):
        k_c = int(shares[c])
        if k_c == 0:
            continue
        if check is not None:
            check()
        members = np.flatnonzero(labels == c)
        sub_inputs = SelectionInputs(**{name: getattr(inputs, name)[members] for name in inputs.present()})
        selector = make(c)
        sub = selector.select(sub_inputs, int(min(k_c, len(members))), seed)
        config = dict(selector.config)
        idx_parts.append(members[np.asarray(sub.indices, dtype=np.int64)])
        w_parts.append(np.asarray(sub.weights, dtype=np.float32))
        if np.isfinite(sub.objective):
            objective += float(sub.objective)
            has_objective = True
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
    found, counts = np.unique(labels[indices], return_counts=True)
    return Subset(
        indices=indices,
        weights=np.concatenate(w_parts) if w_parts else np.zeros(0, dtype=np.float32),
        objective=objective if has_objective else float("nan"),
        class_counts={int(c): int(v) for c, v in zip(found, counts, strict=True)},
        seconds=time.perf_counter() - start,
        method=method,
        options=config,
        extras={"budget_rule": rule, "class_budgets": {str(c): int(v) for c, v in sorted(shares.items())}},
    )
