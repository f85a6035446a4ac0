"""Budget rules, pools, the learned filter, the registry, and the CRAIG/AdaCore/random/balanced selectors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.selection import SelectionInputs, Selector, Subset, available, create, register
from nessa.selection.adacore import softmax_ce_hessian_diag
from nessa.selection.budget import (
    class_budgets,
    count_from_budget,
    largest_remainder,
    partition_class_budgets,
    trim_to_total,
)
from nessa.selection.learned import LearnedExampleFilter
from nessa.selection.pools import class_balanced_partitions
from nessa.selection.registry import get

GOLDEN = Path(__file__).parent / "data" / "craig_digits_golden.json"


# ------------------------------------------------------------------------------------------------ budget
def test_count_from_budget() -> None:
    assert count_from_budget(10, 0.15) == 2  # 1.5 rounds half up on the decimal value
    assert count_from_budget(10, 0.25) == 3
    assert count_from_budget(10, 0.24) == 2
    assert count_from_budget(1000, 0.001) == 1
    assert count_from_budget(1000, 1e-9) == 1  # at least 1
    assert count_from_budget(7, 1.0) == 7
    assert count_from_budget(7, 3) == 3
    assert count_from_budget(7, np.int64(7)) == 7
    for bad in (0, 8, -1, 0.0, 1.5, -0.1, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(InvalidArgumentError) as info:
            count_from_budget(7, bad)  # type: ignore[arg-type]
        assert "(0, 1]" in str(info.value) or "[1, 7]" in str(info.value)
    with pytest.raises(InvalidArgumentError):
        count_from_budget(0, 0.5)


def test_equal_budgets_hand_the_deficit_to_classes_with_room() -> None:
    labels = np.repeat([0, 1, 2, 3], [2, 50, 50, 3])
    out = class_budgets(labels, 40, "equal")  # t = 10 per class; classes 0 and 3 are short by 8 + 7
    assert out == {0: 2, 1: 18, 2: 17, 3: 3}  # level 17, the one left over to the lowest label with room
    assert class_budgets(np.repeat([0, 1, 2], [5, 5, 5]), 7, "equal") == {0: 3, 1: 3, 2: 3}  # ceil overshoot
    assert class_budgets(np.repeat([0, 1], [1, 1]), 2, "equal") == {0: 1, 1: 1}
    labels = np.repeat([5, 7, 9], [1, 4, 10])
    out = class_budgets(labels, 15, "equal")
    assert out == {5: 1, 7: 4, 9: 10}


def test_equal_budgets_random_invariants() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(1, 30, rng.integers(1, 8))
        labels = np.repeat(np.arange(sizes.size), sizes)
        k = int(rng.integers(1, sizes.sum() + 1))
        out = class_budgets(labels, k, "equal")
        t = -(-k // sizes.size)
        total = sum(out.values())
        assert total == min(sizes.size * t, sizes.sum())
        assert all(0 < out[c] <= sizes[c] for c in out)
        full = [c for c in out if out[c] < sizes[c]]  # classes with room left get within 1 of each other
        if full:
            assert max(out[c] for c in full) - min(out[c] for c in full) <= 1
            assert all(out[c] <= max(out[f] for f in full) + 1 for c in out)


def test_proportional_budgets_bound() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        sizes = rng.integers(1, 40, rng.integers(1, 9))
        labels = np.repeat(np.arange(sizes.size), sizes)
        k = int(rng.integers(1, sizes.sum() + 1))
        out = class_budgets(labels, k, "proportional")
        fractional = sum(1 for s in sizes if (s * k) % sizes.sum())
        assert k <= sum(out.values()) <= k + max(fractional - 1, 0)
        assert all(1 <= out[c] <= sizes[c] for c in out)
        for c, s in enumerate(sizes):
            assert out[c] == -(-(s * k) // sizes.sum())


def test_class_budget_errors() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    with pytest.raises(InvalidArgumentError, match=r"class\(es\) \[4\].*no samples"):
        class_budgets(labels, 2, classes=[0, 4])
    with pytest.raises(InvalidArgumentError, match="budget rule"):
        class_budgets(labels, 2, rule="max")
    with pytest.raises(InvalidArgumentError, match=r"\[1, 5\]"):
        class_budgets(labels, 6)
    with pytest.raises(InvalidArgumentError, match="empty"):
        class_budgets(np.array([], dtype=np.int64), 1)
    assert class_budgets(labels, 2, classes=[1]) == {1: 2}


def test_largest_remainder() -> None:
    assert largest_remainder(10, [5, 5, 5]) == [4, 3, 3]
    assert largest_remainder(10, [1, 1, 1]) == [1, 1, 1]  # capped at the sizes
    assert largest_remainder(5, [10, 0, 10]) == [3, 0, 2]
    assert largest_remainder(50, [3, 4]) == [3, 4]
    rng = np.random.default_rng(2)
    for _ in range(100):
        sizes = rng.integers(0, 20, 5).tolist()
        k = int(rng.integers(0, 60))
        out = largest_remainder(k, sizes)
        assert sum(out) == min(k, sum(sizes)) and all(0 <= o <= s for o, s in zip(out, sizes, strict=True))


def test_trim_to_total_cuts_the_largest_budgets_rotating_ties() -> None:
    assert trim_to_total({0: 3, 1: 3, 2: 3}, 7) == {0: 2, 1: 2, 2: 3}
    assert trim_to_total({0: 3, 1: 3, 2: 3}, 7, rotation=1) == {0: 3, 1: 2, 2: 2}
    assert trim_to_total({0: 1, 1: 5, 2: 3}, 6) == {0: 1, 1: 3, 2: 2}
    assert trim_to_total({0: 2}, 2) == {0: 2}
    with pytest.raises(InvalidArgumentError):
        trim_to_total({0: 2}, 3)


# ------------------------------------------------------------------------------------------------ pools
def test_class_balanced_partitions() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 1003)
    parts = class_balanced_partitions(labels, num_partitions=9, seed=4)
    assert len(parts) == 9
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(1003))
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for c in range(7):
        per = [int((labels[p] == c).sum()) for p in parts]
        assert max(per) - min(per) <= 1
    again = class_balanced_partitions(labels, num_partitions=9, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = class_balanced_partitions(labels, num_partitions=9, seed=5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    by_size = class_balanced_partitions(labels, partition_size=100)
    assert len(by_size) == 11 and max(p.size for p in by_size) <= 100
    for bad in ({}, {"num_partitions": 2, "partition_size": 3}, {"num_partitions": 0}, {"partition_size": 0}):
        with pytest.raises(InvalidArgumentError):
            class_balanced_partitions(labels, **bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ learned filter
def test_learned_filter_window_and_state() -> None:
    f = LearnedExampleFilter(window=3, threshold=0.1)
    for _ in range(2):
        f.update(np.array([0, 1, 2]), np.array([0.01, 0.5, 0.01]))
    assert not f.learned_mask(5).any()
    f.update(np.array([0, 1, 2]), np.array([0.01, 0.01, 0.2]))
    assert f.learned_mask(5).tolist() == [True, False, False, False, False]
    f.update(np.array([4]), np.array([0.0]))  # example 0 not observed this time: it stays learned
    assert f.learned_mask(5).tolist() == [True, False, False, False, False]
    f.update(np.array([0]), np.array([0.5]))  # one loss above the threshold resets it
    assert not f.learned_mask(5)[0]
    state = json.loads(json.dumps(f.state_dict()))
    g = LearnedExampleFilter(window=3, threshold=0.1)
    g.load_state_dict(state)
    assert np.array_equal(g.learned_mask(7), f.learned_mask(7))
    with pytest.raises(InvalidArgumentError, match="window"):
        LearnedExampleFilter(window=2, threshold=0.1).load_state_dict(state)
    for bad in ((np.array([0, 0]), np.array([1.0, 1.0])), (np.array([0]), np.array([np.nan])),
                (np.array([-1]), np.array([1.0])), (np.array([0, 1]), np.array([1.0]))):  # fmt: skip
        with pytest.raises(InvalidArgumentError):
            f.update(*bad)
    with pytest.raises(InvalidArgumentError):
        LearnedExampleFilter(window=0, threshold=0.1)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_methods_with_options() -> None:
    methods = available()
    for name in ("random", "balanced", "craig", "adacore"):
        assert name in methods
        assert set(methods[name]) == {"options", "option_specs", "requires", "description"}
        assert methods[name]["description"]
    assert methods["craig"]["requires"] == ["labels", "gradients"]
    # "requires" is what each method needs with its default options (what create(name) would ask for)
    for name, info in methods.items():
        assert info["requires"] == list(create(name).required_inputs())
    assert methods["sas"]["requires"] == ["embeddings", "groups"]
    assert methods["random"]["requires"] == []
    assert methods["craig"]["options"]["similarity"] == "max_minus_dist"
    assert methods["adacore"]["options"]["budget_rule"] == "proportional"
    assert "features" not in methods["adacore"]["options"]
    with pytest.raises(InvalidArgumentError, match=r"available:.*craig"):
        create("kcenter")
    with pytest.raises(InvalidArgumentError, match=r"unknown option.*known options"):
        create("craig", lr=0.1)
    bad = [
        ("craig", {"similarity": "l1"}, "similarity"),
        ("craig", {"pool": "partitions"}, "partition_size"),
        ("craig", {"epsilon": 2.0}, "epsilon"),
        ("craig", {"num_partitions": 3}, "pool='partitions'"),
        ("random", {"budget_rule": "classy"}, "budget_rule"),
        ("adacore", {"beta1": 1.0}, "beta1"),
    ]
    for name, opts, match in bad:
        with pytest.raises(InvalidArgumentError, match=match):
            create(name, **opts)
    assert get("craig") is type(create("craig"))


def test_register_rejects_bad_and_duplicate_classes() -> None:
    class NoName(Selector):
        pass

    with pytest.raises(InvalidArgumentError, match="name"):
        register(NoName)

    class Dup(Selector):
        name = "craig"

    with pytest.raises(InvalidArgumentError, match="already registered"):
        register(Dup)


# ------------------------------------------------------------------------------------------------ selectors
def _gradients(n: int, num_classes: int, seed: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n) if labels is None else labels
    z = rng.standard_normal((n, num_classes)) * 2
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return labels, (p - np.eye(num_classes)[labels]).astype(np.float32)


def _check_subset(s: Subset, n: int) -> None:
    assert s.indices.dtype == np.int64 and s.weights.dtype == np.float32
    assert len(np.unique(s.indices)) == len(s.indices) and s.indices.min() >= 0 and s.indices.max() < n
    assert s.weights.shape == s.indices.shape and np.all(s.weights > 0)


@pytest.mark.parametrize("rule", ["global", "equal", "proportional"])
def test_random_selector(rule: str) -> None:
    labels, grads = _gradients(503, 6, 0)
    inputs = SelectionInputs(labels=labels)
    sel = create("random", budget_rule=rule)
    a, b = sel.select(inputs, 0.2, seed=1), sel.select(inputs, 0.2, seed=1)
    _check_subset(a, 503)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, sel.select(inputs, 0.2, seed=2).indices)
    assert np.all(a.weights == 1.0) and np.isnan(a.objective)
    k = count_from_budget(503, 0.2)
    want = {
        "global": None,
        "equal": class_budgets(labels, k, "equal"),
        "proportional": class_budgets(labels, k, "proportional"),
    }[rule]
    if want is None:
        assert len(a) == k
    else:
        assert a.class_counts == want
    if rule == "global":
        create("random").select(SelectionInputs(gradients=grads), 5)  # no labels needed
    with pytest.raises(InvalidArgumentError, match="global"):
        create("random", budget_rule="none")  # the old name of global


def test_balanced_selector() -> None:
    labels = np.repeat([0, 1, 2], [3, 40, 60])
    s = create("balanced").select(SelectionInputs(labels=labels), 30, seed=0)
    assert s.class_counts == class_budgets(labels, 30, "equal") == {0: 3, 1: 14, 2: 13}
    # unequal budgets are interleaved in proportion: class 0's 3 picks are spread over the order
    assert np.flatnonzero(labels[s.indices] == 0).tolist() == [4, 14, 25]
    even = np.repeat([0, 1, 2], 40)
    s = create("balanced").select(SelectionInputs(labels=even), 30, seed=0)
    assert [sorted(even[s.indices[i : i + 3]].tolist()) for i in range(0, 30, 3)] == [[0, 1, 2]] * 10
    with pytest.raises(InvalidArgumentError, match="labels"):
        create("balanced").select(SelectionInputs(gradients=np.ones((4, 2))), 2)


@pytest.mark.parametrize("backend", ["opencl", "numpy"])
def test_craig_selector(backend: str) -> None:
    labels, grads = _gradients(800, 5, 2)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    s = create("craig", backend=backend).select(inputs, 0.1, seed=0)
    _check_subset(s, 800)
    assert s.class_counts == class_budgets(labels, 80, "equal")
    assert s.weights.sum() == pytest.approx(len(s), rel=1e-5)
    assert s.objective == pytest.approx(sum(s.extras["class_objective"].values()))
    assert sorted(labels[s.indices[:5]].tolist()) == [0, 1, 2, 3, 4]  # interleaved
    # weights are the per-class cluster sizes normalized to mean 1
    sizes = np.zeros(len(s))
    for c in range(5):
        members = np.flatnonzero(labels == c)
        mine = np.flatnonzero(labels[s.indices] == c)
        d = ((grads[members][:, None, :] - grads[s.indices[mine]][None, :, :]) ** 2).sum(-1)
        sizes[mine] = np.bincount(d.argmin(axis=1), minlength=mine.size)
    np.testing.assert_allclose(s.weights, sizes * len(s) / sizes.sum(), rtol=1e-5)
    prop = create("craig", backend=backend, budget_rule="proportional").select(inputs, 0.1)
    assert prop.class_counts == class_budgets(labels, 80, "proportional")


def test_craig_backends_and_optimizers_agree() -> None:
    labels, grads = _gradients(600, 4, 3)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    picks = [create("craig", backend=b, optimizer=o).select(inputs, 0.1).indices
             for b in ("opencl", "numpy") for o in ("lazy", "naive")]  # fmt: skip
    for p in picks[1:]:
        np.testing.assert_array_equal(p, picks[0])


def test_craig_embeddings_and_partitions() -> None:
    labels, grads = _gradients(1000, 4, 4)
    emb = np.random.default_rng(5).standard_normal((1000, 12)).astype(np.float32)
    s = create("craig", features="embeddings", similarity="cosine").select(
        SelectionInputs(labels=labels, embeddings=emb), 0.05
    )
    _check_subset(s, 1000)
    with pytest.raises(InvalidArgumentError, match="embeddings"):
        create("craig", features="embeddings").select(SelectionInputs(labels=labels, gradients=grads), 0.05)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    part = create("craig", pool="partitions", partition_size=250).select(inputs, 0.1, seed=3)
    _check_subset(part, 1000)
    assert part.extras["pools"] == 4 and len(part) == 100
    pools = class_balanced_partitions(labels, partition_size=250, seed=3)
    owner = np.empty(1000, dtype=np.int64)
    for i, p in enumerate(pools):
        owner[p] = i
    assert [int((owner[part.indices] == i).sum()) for i in range(4)] == [25, 25, 25, 25]
    assert part.weights.sum() == pytest.approx(len(part), rel=1e-5)


def _check_partition_budgets(labels: np.ndarray, pools: list[np.ndarray], k: int, rule: str) -> None:
    budgets = partition_class_budgets(labels, pools, k, rule)
    assert sum(sum(b.values()) for b in budgets) == k
    shares = largest_remainder(k, [p.size for p in pools])
    for pool, per_class, share in zip(pools, budgets, shares, strict=True):
        assert sum(per_class.values()) == share
        if share == 0:
            continue
        keys, counts = np.unique(labels[pool], return_counts=True)
        size = dict(zip(keys.tolist(), counts.tolist(), strict=True))
        assert sorted(per_class) == sorted(size)
        top = max(per_class.values())
        for c, v in per_class.items():
            assert 0 <= v <= size[c]
            if rule == "equal":  # water-filling: a class with room is within one of the largest budget
                assert v == size[c] or v >= top - 1
            else:  # proportional: within one of the exact share
                assert abs(v - share * size[c] / pool.size) < 1


def test_partition_budgets_are_exact_for_any_class_and_partition_count() -> None:
    """Property: for many (classes, partitions, budget, rule), the per-partition class budgets sum to the budget."""
    rng = np.random.default_rng(11)
    for trial in range(300):
        num_classes = int(rng.integers(1, 120))
        n = int(rng.integers(num_classes, 4000))
        labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
        if trial % 3 == 0:  # skewed class sizes
            labels = np.minimum(labels, rng.integers(0, num_classes, n))
        parts = int(rng.integers(1, min(n, 64) + 1))
        pools = class_balanced_partitions(labels, num_partitions=parts, seed=trial)
        k = int(rng.integers(1, n + 1))
        _check_partition_budgets(labels, pools, k, "equal" if trial % 2 == 0 else "proportional")
    # The audit's case: 100 classes, 10 partitions, budget 1,280 (the ceil rule alone gave 2,000).
    labels = np.repeat(np.arange(100), 128)
    pools = class_balanced_partitions(labels, num_partitions=10, seed=0)
    _check_partition_budgets(labels, pools, 1280, "equal")
    # The cuts rotate over the classes: the per-class totals over all partitions differ by at most one.
    budgets = partition_class_budgets(labels, pools, 1280, "equal")
    per_class = [sum(b.get(c, 0) for b in budgets) for c in range(100)]
    assert max(per_class) - min(per_class) <= 1


@pytest.mark.parametrize(("num_classes", "parts", "budget"), [(100, 10, 1280), (10, 10, 1280), (7, 3, 101)])
def test_craig_partitions_return_exactly_the_budget(num_classes: int, parts: int, budget: int) -> None:
    rng = np.random.default_rng(num_classes)
    n = 12_800 if num_classes == 100 else 3000
    labels = rng.permutation(np.arange(n) % num_classes)
    grads = rng.standard_normal((n, 8)).astype(np.float32)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    sel = create("craig", pool="partitions", num_partitions=parts, backend="numpy").select(inputs, budget, seed=1)
    _check_subset(sel, n)
    assert len(sel) == budget
    assert sel.weights.mean() == pytest.approx(1.0, rel=1e-5)


def test_craig_drop_learned_keeps_state_across_calls() -> None:
    labels, grads = _gradients(400, 2, 6)
    losses = np.where(np.arange(400) < 300, 0.01, 1.0).astype(np.float32)
    inputs = SelectionInputs(labels=labels, gradients=grads, losses=losses)
    sel = create("craig", drop_learned=True, learned_window=2, learned_threshold=0.1)
    first = sel.select(inputs, 40)
    assert first.extras["dropped_learned"] == 0
    second = sel.select(inputs, 40)
    assert second.extras["dropped_learned"] == 300 and np.all(second.indices >= 300)
    state = json.loads(json.dumps(sel.state_dict()))
    fresh = create("craig", drop_learned=True, learned_window=2, learned_threshold=0.1)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.select(inputs, 40).indices, sel.select(inputs, 40).indices)
    big = sel.select(inputs, 300)  # too few unlearned examples left: classes keep all their candidates
    assert big.extras["dropped_learned"] < 300 and len(big) == 300
    with pytest.raises(InvalidArgumentError, match="losses"):
        sel.select(SelectionInputs(labels=labels, gradients=grads), 40)
    with pytest.raises(InvalidArgumentError):
        create("craig").load_state_dict(state)


def test_adacore_selector_and_ema_state() -> None:
    labels, grads = _gradients(500, 5, 7)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    sel = create("adacore")
    s1 = sel.select(inputs, 0.1)
    _check_subset(s1, 500)
    assert s1.class_counts == class_budgets(labels, 50, "proportional")
    # the first call's vectors are g / (|p(1-p)| + eps): the selection equals CRAIG on them
    h = softmax_ce_hessian_diag(grads, labels)
    v = (grads / (np.sqrt(h * h) + 1e-4)).astype(np.float32)
    craig = create("craig", budget_rule="proportional").select(SelectionInputs(labels=labels, gradients=v), 0.1)
    np.testing.assert_array_equal(s1.indices, craig.indices)
    s2 = sel.select(inputs, 0.1)  # same gradients again: the EMA of a constant is that constant
    np.testing.assert_array_equal(s2.indices, s1.indices)
    state = sel.state_dict()
    assert state["ema"]["t"] == 2
    other = create("adacore")
    other.load_state_dict(json.loads(json.dumps(state)))
    _, grads2 = _gradients(500, 5, 8, labels)
    np.testing.assert_array_equal(
        other.select(SelectionInputs(labels=labels, gradients=grads2), 0.1).indices,
        sel.select(SelectionInputs(labels=labels, gradients=grads2), 0.1).indices,
    )
    with pytest.raises(FailedPreconditionError, match="one selector per dataset"):
        sel.select(SelectionInputs(labels=labels[:100], gradients=grads[:100]), 0.1)
    with pytest.raises(InvalidArgumentError, match="softmax"):
        create("adacore").select(SelectionInputs(labels=labels, gradients=grads * 5), 0.1)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 5\)"):
        create("adacore").select(SelectionInputs(labels=labels + 1, gradients=grads), 0.1)


@pytest.mark.parametrize("name", ["random", "balanced", "craig", "adacore"])
def test_bad_selection_inputs(name: str) -> None:
    labels, grads = _gradients(50, 3, 9)
    sel = create(name)
    bad_grads = grads.copy()
    bad_grads[3, 1] = np.nan
    for budget in (0, 51, 0.0, 1.2, -3):
        with pytest.raises(InvalidArgumentError):
            sel.select(SelectionInputs(labels=labels, gradients=grads), budget)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        sel.select(SelectionInputs(labels=labels, gradients=bad_grads), 5)
    with pytest.raises(InvalidArgumentError, match="length mismatch"):
        sel.select(SelectionInputs(labels=labels[:40], gradients=grads), 5)


def _all_inputs(n: int = 60, num_classes: int = 3, seed: int = 10, **override: np.ndarray) -> SelectionInputs:
    """Every input field filled in (valid for every method), with some fields replaced."""
    rng = np.random.default_rng(seed)
    labels, grads = _gradients(n, num_classes, seed, np.arange(n) % num_classes)
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    fields = {
        "labels": labels,
        "gradients": grads,
        "losses": rng.random(n).astype(np.float32),
        "embeddings": emb,
        "caption_embeddings": (emb + 0.3 * rng.standard_normal((n, 8))).astype(np.float32),
        "groups": labels.copy(),
    }
    fields.update(override)
    return SelectionInputs(**fields)


def test_every_method_rejects_bad_budgets_and_seeds_with_a_fix_it_message() -> None:
    inputs = _all_inputs()
    for name in available():
        sel = create(name)
        s = sel.select(inputs, 0.5, seed=0)  # the fixture is valid for every method
        _check_subset(s, 60)
        for budget in (0, -3, 61, 0.0, -0.5, 1.2, float("nan"), float("inf"), True, "10", None):
            with pytest.raises(ValueError, match=r"\(0, 1\]|\[1, 60\]") as info:
                sel.select(inputs, budget, seed=0)  # type: ignore[arg-type]
            assert isinstance(info.value, InvalidArgumentError), name
        for seed in (-1, 1.5, "0", None):
            with pytest.raises(InvalidArgumentError, match="seed must be an int >= 0"):
                sel.select(inputs, 0.5, seed=seed)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="SelectionInputs"):
            sel.select({"labels": inputs.labels}, 0.5)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match=rf"{name}: unknown option\(s\) \['bogus'\]; known options"):
            create(name, bogus=1)


@pytest.mark.parametrize("field", ["gradients", "losses", "embeddings", "caption_embeddings"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_rejected_naming_the_field(field: str, bad: float) -> None:
    good = getattr(_all_inputs(), field).copy()
    good.reshape(-1)[7] = bad
    with pytest.raises(ValueError, match=rf"{field} holds 1 NaN/Inf values; fix"):
        _all_inputs(**{field: good})


def test_malformed_inputs_are_rejected_with_what_to_fix() -> None:
    inputs = _all_inputs()
    for field in ("labels", "gradients", "losses", "embeddings", "caption_embeddings", "groups"):
        short = getattr(inputs, field)[:59]
        mismatch = r"length mismatch: \w+ has (59|60) samples but \w+ has (59|60); give one row per sample"
        with pytest.raises(ValueError, match=mismatch):
            _all_inputs(**{field: short})
    with pytest.raises(ValueError, match="labels must be integers"):
        _all_inputs(labels=np.full(60, 0.5))
    with pytest.raises(ValueError, match="labels must be 1-D"):
        _all_inputs(labels=np.zeros((60, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"gradients must be 2-D \(n, dim\)"):
        _all_inputs(gradients=np.zeros(60, dtype=np.float32))
    with pytest.raises(ValueError, match="embeddings must be numeric"):
        _all_inputs(embeddings=np.array([["a"] * 8] * 60))
    with pytest.raises(ValueError, match="no candidates"):
        create("random").select(SelectionInputs(labels=np.zeros(0, dtype=np.int64)), 1)
    with pytest.raises(ValueError, match=r"needs inputs \['gradients'\]"):
        create("craig").select(SelectionInputs(labels=inputs.labels), 0.5)


# ------------------------------------------------------------------------------------------------ golden
def _slow_greedy(x: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Plain float64 O(n²k) facility-location greedy with CRAIG's similarity (max distance − distance)."""
    n = x.shape[0]
    x64 = x.astype(np.float64)
    d = np.zeros((n, n))
    for i in range(n):
        d[i] = np.sqrt(((x64 - x64[i]) ** 2).sum(axis=1))
    s = d.max() - d
    cov = np.zeros(n)
    chosen: list[int] = []
    for _ in range(k):
        best, best_j = -1.0, -1
        for j in range(n):
            if j in chosen:
                continue
            gain = float(np.maximum(s[j] - cov, 0.0).sum())
            if gain > best:
                best, best_j = gain, j
        chosen.append(best_j)
        cov = np.maximum(cov, s[best_j])
    nearest = np.argmax(s[:, chosen], axis=1)
    return chosen, np.bincount(nearest, minlength=k).tolist()


def _digits_reference() -> dict[str, list[int]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    k = count_from_budget(len(y), 0.1)
    per_class = class_budgets(y, k, "equal")
    orders, sizes = [], []
    for c in sorted(per_class):
        members = np.flatnonzero(y == c)
        chosen, counts = _slow_greedy(x[members], per_class[c])
        orders.append(members[chosen])
        sizes.append(counts)
    from nessa.selection.facility_location import interleave_positions

    perm = interleave_positions([len(o) for o in orders])
    return {"indices": np.concatenate(orders)[perm].tolist(), "cluster_sizes": np.concatenate(sizes)[perm].tolist()}


@pytest.mark.parametrize("backend", ["opencl", "numpy"])
def test_craig_matches_golden_on_digits(backend: str) -> None:
    from sklearn.datasets import load_digits

    if os.environ.get("NESSA_REGEN_GOLDEN") == "1" and backend == "opencl":
        GOLDEN.write_text(json.dumps(_digits_reference()) + "\n")
    golden = json.loads(GOLDEN.read_text())
    data = load_digits()
    inputs = SelectionInputs(labels=data.target, embeddings=data.data.astype(np.float32))
    s = create("craig", features="embeddings", backend=backend).select(inputs, 0.1)
    assert s.indices.tolist() == golden["indices"]
    sizes = np.asarray(golden["cluster_sizes"], dtype=np.float64)
    np.testing.assert_allclose(s.weights, sizes * len(sizes) / sizes.sum(), rtol=1e-6)


def test_golden_file_matches_the_slow_reference() -> None:
    assert _digits_reference() == json.loads(GOLDEN.read_text())


# ------------------------------------------------------------------------------------------------ API for the daemon
def test_requires_agrees_with_required_inputs_for_every_method_and_option() -> None:
    from nessa.selection import required_inputs

    for name, info in available().items():
        cls = get(name)
        assert tuple(info["requires"]) == cls.requires == create(name).required_inputs() == required_inputs(name)
        assert set(info["option_specs"]) == set(info["options"])
        json.dumps(info["option_specs"])  # JSON-able for the CLI, the daemon and the docs
    cases = [
        ("sas", {"num_latent_classes": 3}, ("embeddings",)),
        ("craig", {"drop_learned": True}, ("labels", "gradients", "losses")),
        ("craig", {"budget_rule": "global"}, ("gradients",)),
        ("craig", {"features": "embeddings"}, ("labels", "embeddings")),
        ("random", {"budget_rule": "equal"}, ("labels",)),
        ("crest", {"drop_learned": True}, ("labels", "gradients", "losses")),
        ("augment", {"gradient": "penultimate"}, ("labels", "gradients", "embeddings")),
        ("clipcov", {"class_name_embeddings": [[1.0, 0.0]]}, ("embeddings", "caption_embeddings")),
    ]
    for name, opts, want in cases:
        assert required_inputs(name, opts) == want == create(name, **opts).required_inputs()
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        required_inputs("craig", {"lr": 1})
    with pytest.raises(InvalidArgumentError, match="budget_rule"):
        required_inputs("craig", {"budget_rule": "none"})


def test_options_are_typed_frozen_dataclasses() -> None:
    import dataclasses

    from nessa.selection import options_class

    opts = create("craig", budget_rule="proportional").opts
    assert dataclasses.is_dataclass(opts) and type(opts) is options_class("craig")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.budget_rule = "equal"  # type: ignore[misc]
    assert options_class("adacore")().budget_rule == "proportional"
    with pytest.raises(InvalidArgumentError, match="similarity"):
        options_class("craig")(similarity="l1")
    assert available()["crest"]["option_specs"]["class_rule"]["choices"] == ["equal", "proportional"]


def test_budget_rule_vocabulary_is_shared() -> None:
    from nessa.selection.budget import BUDGET_RULES

    assert BUDGET_RULES == ("global", "equal", "proportional")
    for name in ("random", "craig"):
        assert available()[name]["option_specs"]["budget_rule"]["choices"] == list(BUDGET_RULES)
    labels, grads = _gradients(300, 3, 8)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    whole = create("craig", budget_rule="global").select(SelectionInputs(gradients=grads), 30)
    assert len(whole) == 30 and whole.extras["class_objective"].keys() == {"0"}
    assert len(create("craig", budget_rule="global").select(inputs, 30)) == 30


@pytest.mark.parametrize("rule", ["equal", "proportional"])
def test_select_with_budget_rule_runs_a_fresh_selector_per_class(rule: str) -> None:
    from nessa.selection import select_with_budget_rule

    labels, grads = _gradients(600, 4, 9, labels=np.repeat([0, 1, 2, 3], [300, 150, 100, 50]))
    inputs = SelectionInputs(labels=labels, gradients=grads)
    got = select_with_budget_rule("adacore", inputs, 0.1, rule, seed=3, options={"backend": "numpy"})
    k = count_from_budget(600, 0.1)
    shares = class_budgets(labels, k, rule)
    want_idx, want_w, objective = [], [], 0.0
    for c in sorted(shares):  # the daemon's semantics, each class on a new instance
        members = np.flatnonzero(labels == c)
        sub = create("adacore", backend="numpy").select(
            SelectionInputs(labels=labels[members], gradients=grads[members]), shares[c], 3
        )
        want_idx.append(members[sub.indices])
        want_w.append(sub.weights)
        objective += sub.objective
    np.testing.assert_array_equal(got.indices, np.concatenate(want_idx))
    np.testing.assert_array_equal(got.weights, np.concatenate(want_w))
    assert got.objective == pytest.approx(objective)
    assert got.class_counts == shares and got.extras["budget_rule"] == rule
    made: list[int | None] = []

    def factory(c: int | None) -> Selector:
        made.append(c)
        return create("adacore", backend="numpy")

    select_with_budget_rule("adacore", inputs, 0.1, rule, seed=3, selector_for=factory)
    assert made == [0, 1, 2, 3]  # one selector per class: no EMA state chained from class to class
    whole = select_with_budget_rule("random", inputs, 0.1, "global", seed=1)
    np.testing.assert_array_equal(whole.indices, create("random").select(inputs, 0.1, seed=1).indices)
    with pytest.raises(InvalidArgumentError, match="labels"):
        select_with_budget_rule("random", SelectionInputs(gradients=grads), 0.1, rule)
    with pytest.raises(InvalidArgumentError, match="budget rule"):
        select_with_budget_rule("random", inputs, 0.1, "none")


def test_unit_weights_option() -> None:
    labels, grads = _gradients(400, 4, 10)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    for name in ("craig", "adacore", "crest"):
        opts = {"minibatch_size": 16} if name == "crest" else {}
        weighted = create(name, **opts).select(inputs, 0.1)
        unit = create(name, unit_weights=True, **opts).select(inputs, 0.1)
        np.testing.assert_array_equal(unit.indices, weighted.indices)
        assert np.all(unit.weights == 1.0) and not np.all(weighted.weights == 1.0)
        np.testing.assert_allclose(unit.extras["cluster_weights"], weighted.weights)
