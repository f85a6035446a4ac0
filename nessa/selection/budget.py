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
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from nessa.accel.reference.selection import is_int, is_real
from nessa.errors import InvalidArgumentError

__all__ = [
    "BUDGET_RULES",
    "class_budgets",
    "count_from_budget",
    "largest_remainder",
    "partition_class_budgets",
    "trim_to_total",
]

#: Per-class budget rules understood by :func:`class_budgets`.
BUDGET_RULES = ("equal", "proportional")


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
    if rule not in BUDGET_RULES:
        raise InvalidArgumentError(f"unknown budget rule {rule!r}; use one of {list(BUDGET_RULES)}")
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
    on, its overshoot trimmed back to the share from the largest budgets (:func:`trim_to_total`, ties rotated by the
    partition's number so no class is always the one cut), which is the same water-filling at exactly the share;
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
    for p, (pool, share) in enumerate(zip(partitions, shares, strict=True)):
        if share == 0:
            out.append({})
            continue
        members = arr[np.asarray(pool, dtype=np.int64)]
        if rule == "proportional":
            keys, counts = np.unique(members, return_counts=True)
            parts = largest_remainder(share, [int(v) for v in counts])
            out.append({int(c): v for c, v in zip(keys, parts, strict=True)})
        else:
            out.append(trim_to_total(class_budgets(members, share, rule=rule), share, rotation=p))
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
