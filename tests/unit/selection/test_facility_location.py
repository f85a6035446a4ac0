"""The facility-location engine: greedy guarantees, lazy == naive, stochastic bound, backends agree, GreeDi memory."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest

from nessa.accel.reference import selection as ref
from nessa.errors import InvalidArgumentError
from nessa.selection.facility_location import interleave, interleave_positions, maximize, mean_one_weights

BACKENDS = ["opencl", "numpy"]
KINDS = ["max_minus_dist", "exp", "cosine"]


def _fl_value(s: np.ndarray, subset: list[int] | np.ndarray) -> float:
    """F(S) = Σ_i max(0, max_{j∈S} s_ij) for a dense (n, n) similarity."""
    if len(subset) == 0:
        return 0.0
    return float(np.maximum(s[:, list(subset)].max(axis=1), 0.0).sum())


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, d)) * 3
    return (centers[rng.integers(0, 4, n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_beats_one_minus_one_over_e_of_brute_force(backend: str, kind: str) -> None:
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 13))
        k = int(rng.integers(1, 5))
        x = rng.standard_normal((n, 3)).astype(np.float32)
        res = maximize(x, k, similarity=kind, backend=backend, optimizer="naive")
        s = ref.similarity(x, x, kind, res.stats["param"]).astype(np.float64)
        opt = max(_fl_value(s, list(c)) for c in itertools.combinations(range(n), k))
        assert res.objective == pytest.approx(_fl_value(s, res.indices), rel=1e-5)
        assert res.objective >= (1 - 1 / math.e) * opt - 1e-6
        assert res.objective <= opt * (1 + 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_lazy_order_equals_naive_order(backend: str, kind: str) -> None:
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        n = int(rng.integers(20, 260))
        k = int(rng.integers(1, n // 2))
        x = _clustered(n, int(rng.integers(2, 12)), seed)
        if seed % 3 == 0:
            x = np.round(x)  # many exact ties in distances and gains
        naive = maximize(x, k, similarity=kind, backend=backend, optimizer="naive", threshold=0.1 * (seed % 2))
        lazy = maximize(x, k, similarity=kind, backend=backend, optimizer="lazy", threshold=0.1 * (seed % 2))
        np.testing.assert_array_equal(lazy.indices, naive.indices)
        np.testing.assert_array_equal(lazy.gains, naive.gains)
        assert lazy.stats["gain_evaluations"] <= naive.stats["gain_evaluations"]


def test_greedy_picks_lowest_index_on_ties() -> None:
    x = np.array([[0.0], [0.0], [10.0], [10.0], [10.0]], dtype=np.float32)
    for backend in BACKENDS:
        for optimizer in ("naive", "lazy"):
            res = maximize(x, 2, backend=backend, optimizer=optimizer)
            assert res.indices.tolist() == [2, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_greedy_meets_its_bound_on_average(backend: str) -> None:
    eps = 0.2
    ratios = []
    for seed in range(12):
        rng = np.random.default_rng(200 + seed)
        n, k = 11, 3
        x = rng.standard_normal((n, 2)).astype(np.float32)
        res = maximize(x, k, backend=backend, optimizer="stochastic", epsilon=eps, seed=seed)
        s = ref.similarity(x, x, "max_minus_dist", res.stats["param"]).astype(np.float64)
        opt = max(_fl_value(s, list(c)) for c in itertools.combinations(range(n), k))
        ratios.append(res.objective / opt)
        assert len(set(res.indices.tolist())) == k
    assert np.mean(ratios) >= 1 - 1 / math.e - eps


def test_stochastic_greedy_is_seeded_and_samples_the_stated_size() -> None:
    x = _clustered(400, 5, 1)
    a = maximize(x, 20, optimizer="stochastic", seed=3)
    b = maximize(x, 20, optimizer="stochastic", seed=3)
    c = maximize(x, 20, optimizer="stochastic", seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.indices.tolist() != c.indices.tolist()
    sample = math.ceil(400 / 20 * math.log(1 / 0.1))
    assert a.stats["gain_evaluations"] == 20 * sample


def test_stochastic_samples_draw_what_the_per_step_choice_draws() -> None:
    from nessa.selection.facility_location import stochastic_samples

    for m, k, eps in ((400, 20, 0.1), (30, 25, 0.5), (12_050, 3, 0.1)):
        positions, counts = stochastic_samples(m, k, eps, np.random.default_rng(5))
        rng = np.random.default_rng(5)
        sample = math.ceil(m / k * math.log(1 / eps))
        ids = np.arange(m) * 3 + 1  # any sorted ids: the draw depends only on how many are left
        for t in range(k):
            left = ids[t:]
            want = np.sort(rng.choice(left, size=sample, replace=False)) if left.size > sample else left
            np.testing.assert_array_equal(left[positions[t, : counts[t]]], want)


@pytest.mark.parametrize("kind", KINDS)
def test_backends_give_the_same_selection(kind: str) -> None:
    for seed in range(4):
        x = _clustered(300, 7, 300 + seed)
        for optimizer in ("lazy", "stochastic"):
            a = maximize(x, 25, similarity=kind, backend="opencl", optimizer=optimizer, seed=seed)
            b = maximize(x, 25, similarity=kind, backend="numpy", optimizer=optimizer, seed=seed)
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.assignment, b.assignment)
            assert a.objective == pytest.approx(b.objective, rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_result_fields_are_consistent(backend: str) -> None:
    x = _clustered(157, 6, 5)
    res = maximize(x, 13, backend=backend)
    assert res.indices.dtype == np.int64 and len(np.unique(res.indices)) == 13
    assert res.cluster_sizes.sum() == 157
    assert res.assignment.shape == (157,) and res.assignment.min() >= 0 and res.assignment.max() < 13
    # each element's assignment is its nearest selected element (ties: the earlier pick)
    d = np.sqrt(ref.pairwise_sq_dists(x, x[res.indices]).astype(np.float64))
    np.testing.assert_array_equal(d[np.arange(157), res.assignment], d.min(axis=1))
    np.testing.assert_array_equal(res.assignment[res.indices], np.arange(13))
    np.testing.assert_array_equal(res.cluster_sizes, np.bincount(res.assignment, minlength=13))
    assert res.objective == pytest.approx(res.gains.sum(), rel=1e-4)
    assert np.all(np.diff(res.gains) <= 1e-3)  # gains shrink along the greedy order
    w = mean_one_weights(res.cluster_sizes)
    assert w.dtype == np.float32 and w.sum() == pytest.approx(13, rel=1e-6)


def test_submodlib_weight_rule() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    craig = maximize(x, 2, similarity="cosine", weight_rule="craig")
    sub = maximize(x, 2, similarity="cosine", weight_rule="submodlib")
    np.testing.assert_array_equal(craig.indices, sub.indices)
    assert craig.cluster_sizes.sum() == 5
    # elements with cosine <= 0 to every pick are not counted; zero counts become 1
    best = ref.similarity(x, x[sub.indices], "cosine").max(axis=1)
    assert sub.cluster_sizes.sum() <= max(int((best > 0).sum()), 2)
    assert np.all(sub.cluster_sizes >= 1)


def test_mean_one_weights_and_interleave() -> None:
    np.testing.assert_allclose(mean_one_weights(np.array([1.0, 3.0])), [0.5, 1.5])
    np.testing.assert_allclose(mean_one_weights(np.zeros(3)), [1.0, 1.0, 1.0])
    with pytest.raises(InvalidArgumentError):
        mean_one_weights(np.array([-1.0, 2.0]))
    assert interleave([np.array([1, 2, 3]), np.array([10, 20, 30])]).tolist() == [1, 10, 2, 20, 3, 30]
    assert interleave([np.array([1, 2, 3, 4]), np.array([10, 20])]).tolist() == [1, 10, 2, 3, 20, 4]
    assert interleave([np.array([], dtype=np.int64), np.array([7])]).tolist() == [7]
    assert sorted(interleave_positions([3, 0, 2]).tolist()) == list(range(5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedi_two_rounds_and_partitioned(backend: str) -> None:
    x = _clustered(3000, 4, 7)
    dense = maximize(x, 20, backend=backend)
    two = maximize(x, 20, backend=backend, block_size=700)
    assert two.stats["mode"] == "greedi" and two.stats["parts"] == 5 and two.stats["max_block"] <= 700
    assert len(np.unique(two.indices)) == 20 and two.cluster_sizes.sum() == 3000
    # same M on both sides for a fair comparison of the achieved objective
    d = np.sqrt(ref.pairwise_sq_dists(x, x[two.indices]).astype(np.float64)).min(axis=1)
    d_dense = np.sqrt(ref.pairwise_sq_dists(x, x[dense.indices]).astype(np.float64)).min(axis=1)
    assert d.sum() <= 1.05 * d_dense.sum()  # k-medoid cost within 5% of the dense greedy's
    part = maximize(x, 900, backend=backend, block_size=700)
    assert part.stats["mode"] == "partitioned" and part.stats["max_block"] <= 700
    assert len(np.unique(part.indices)) == 900 and part.cluster_sizes.sum() == 3000
    np.testing.assert_array_equal(part.assignment[part.indices], np.arange(900))


def test_greedi_memory_stays_far_below_n_squared() -> None:
    n, block = 30_000, 2_000
    x = _clustered(n, 8, 8)
    tracemalloc.start()
    res = maximize(x, 50, backend="numpy", block_size=block)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.stats["mode"] == "greedi" and res.stats["max_block"] <= block
    assert peak < 0.05 * n * n * 4, f"peak {peak / 2**20:.0f} MiB"
    cl_res = maximize(x, 50, backend="opencl", block_size=block)
    assert cl_res.stats["max_block"] <= block and len(np.unique(cl_res.indices)) == 50
    assert cl_res.cluster_sizes.sum() == n


def test_partitioned_numpy_memory_is_bounded_by_the_block_size() -> None:
    """k large enough that GreeDi's union would exceed a block ("partitioned"); the final nearest-selected pass of
    the numpy reference must not build the n × k similarity (it would be 20,000 × 2,000 float64 = 320 MB)."""
    n, block, k = 20_000, 1_000, 2_000
    x = _clustered(n, 6, 9)
    tracemalloc.start()
    res = maximize(x, k, backend="numpy", block_size=block)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.stats["mode"] == "partitioned" and res.stats["max_block"] <= block
    assert peak < 40 * block * block * 4, f"peak {peak / 2**20:.0f} MiB"  # a few dense blocks, not n × k
    # the chunked assignment is each element's most similar pick, as one unchunked pass gives
    pos, _ = ref.nearest_selected(x[:3000], x[res.indices], "max_minus_dist", res.stats["param"])
    np.testing.assert_array_equal(res.assignment[:3000], pos)
    assert res.cluster_sizes.sum() == n and len(np.unique(res.indices)) == k


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k=0"),
        ({"k": 11}, r"\[1, 10\]"),
        ({"k": 2.5}, "int"),
        ({"similarity": "l2"}, "similarity kind"),
        ({"optimizer": "greedy"}, "optimizer"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"backend": "cuda"}, "backend"),
        ({"block_size": 1}, "block_size"),
        ({"weight_rule": "x"}, "weight_rule"),
        ({"similarity": "exp", "similarity_param": 0.0}, "> 0"),
        ({"threshold": float("nan")}, "threshold"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    x = np.ones((10, 3), dtype=np.float32)
    args: dict[str, object] = {"k": 2, **kwargs}
    k = args.pop("k")
    with pytest.raises(InvalidArgumentError, match=match):
        maximize(x, k, **args)  # type: ignore[arg-type]


def test_bad_features() -> None:
    x = np.ones((10, 3), dtype=np.float32)
    x[2, 1] = np.inf
    with pytest.raises(InvalidArgumentError, match="NaN/Inf"):
        maximize(x, 2)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        maximize(np.ones(10), 2)
    with pytest.raises(InvalidArgumentError, match="empty"):
        maximize(np.ones((0, 3)), 1)
