"""The OpenCL selection kernels held to their numpy references on odd sizes (PoCL on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from nessa.accel import selection_ops as cl_ops
from nessa.accel.reference import selection as ref
from nessa.accel.selection_ops import get_ops
from nessa.errors import FailedPreconditionError, InvalidArgumentError

SHAPES = [(37, 53, 3), (37, 53, 10), (37, 53, 129), (1, 1, 1), (8, 64, 16)]


def _data(m: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, d)).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32)


@pytest.fixture(params=["blocked", "tiled"])
def variant(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(cl_ops.ENV_PAIRWISE, request.param)
    return str(request.param)


@pytest.mark.parametrize(("m", "n", "d"), SHAPES)
def test_pairwise_sq_dists_matches_reference(m: int, n: int, d: int, variant: str) -> None:
    a, b = _data(m, n, d)
    got, want = cl_ops.pairwise_sq_dists(a, b), ref.pairwise_sq_dists(a, b)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * max(1.0, float(want.max())))


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize(("n", "d", "w"), [(37, 3, 8), (53, 129, 16), (1, 1, 16), (16, 10, 16), (8, 5, 8)])
def test_pack_panels_matches_reference(n: int, d: int, w: int, centered: bool) -> None:
    x, _ = _data(n, 1, d, seed=4)
    x += 3.0
    center = cl_ops.distance_center(x) if centered else np.zeros(d, dtype=np.float32)
    rt = cl_ops._rt()
    p_buf, n_buf, n_pad = cl_ops._panels(rt, cl_ops._to_device(rt, x), cl_ops._to_device(rt, center), n, d, w)
    want_p, want_n = ref.pack_panels(x, w, center)
    assert n_pad == want_n.shape[0]
    got_p = cl_ops._read(rt.queue, p_buf, want_p.shape, np.float32)
    got_n = cl_ops._read(rt.queue, n_buf, want_n.shape, np.float32)
    np.testing.assert_array_equal(got_p, want_p)
    np.testing.assert_allclose(got_n, want_n, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("m", "n", "d"), [(37, 53, 129), (67, 45, 512), (5, 200, 33)])
def test_pairwise_self_distance_is_exactly_zero(m: int, n: int, d: int) -> None:
    """The blocked kernel's dot-product form keeps a row's distance to itself at exactly 0 (and never below 0)."""
    a, b = _data(m, n, d, seed=5)
    b[: min(m, n)] = a[: min(m, n)] * 3.0
    a *= 3.0
    got = cl_ops.pairwise_sq_dists(a, b)
    diag = np.arange(min(m, n))
    assert np.all(got[diag, diag] == 0.0) and got.min() >= 0.0
    want = ref.pairwise_sq_dists(a, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * float(want.max()))


@pytest.mark.parametrize(("m", "n", "d"), SHAPES)
def test_cosine_similarity_matches_reference(m: int, n: int, d: int, variant: str) -> None:
    a, b = _data(m, n, d, seed=1)
    a[0] = 0.0  # a zero row has cosine 0 with everything
    got, want = cl_ops.cosine_similarity(a, b), ref.cosine_similarity(a, b)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.all(got[0] == 0.0)


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp", "cosine"])
@pytest.mark.parametrize(("param", "threshold"), [(None, 0.0), (None, 0.3), (7.5, 0.0)])
def test_similarity_kinds_match_reference(kind: str, param: float | None, threshold: float, variant: str) -> None:
    a, b = _data(37, 53, 10, seed=2)
    got = cl_ops.similarity(a, b, kind, param, threshold)
    want = ref.similarity(a, b, kind, param, threshold)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_max_minus_dist_uses_block_max() -> None:
    a, b = _data(37, 53, 10, seed=3)
    s = cl_ops.similarity(a, b, "max_minus_dist")
    d = np.sqrt(ref.pairwise_sq_dists(a, b))
    np.testing.assert_allclose(s, d.max() - d, atol=1e-4)
    assert s.min() == pytest.approx(0.0, abs=1e-5)  # the farthest pair


def test_exp_default_scale_is_feature_dim() -> None:
    a, b = _data(5, 6, 4, seed=4)
    d = np.sqrt(ref.pairwise_sq_dists(a, b).astype(np.float64))
    np.testing.assert_allclose(cl_ops.similarity(a, b, "exp"), np.exp(-d / 4.0), rtol=1e-5)


@pytest.mark.parametrize(("n", "k", "d"), [(37, 53, 3), (53, 37, 129), (100, 1, 10), (1, 9, 5)])
@pytest.mark.parametrize("kind", ["max_minus_dist", "exp", "cosine"])
def test_nearest_selected_matches_reference(n: int, k: int, d: int, kind: str) -> None:
    x, y = _data(n, k, d, seed=5)
    got_i, got_v = cl_ops.nearest_selected(x, y, kind)
    want_i, want_v = ref.nearest_selected(x, y, kind)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=2e-5)


def test_nearest_selected_ties_go_to_lowest_position() -> None:
    x = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    sel = np.array([[3.0, 3.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]] * 5, dtype=np.float32)  # 20 rows, 3 lanes deep
    for ops in (cl_ops, ref):
        idx, _ = ops.nearest_selected(x, sel, "max_minus_dist", 100.0)
        assert idx.tolist() == [1, 1, 0]


@pytest.mark.parametrize(("n", "k", "d"), [(37, 53, 3), (531, 17, 10), (9, 9, 129)])
def test_kmeans_assign_matches_reference(n: int, k: int, d: int) -> None:
    x, c = _data(n, k, d, seed=6)
    got_l, got_d = cl_ops.kmeans_assign(x, c)
    want_l, want_d = ref.kmeans_assign(x, c)
    np.testing.assert_array_equal(got_l, want_l)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-4)


def test_kmeans_assign_ties_pick_lowest_center() -> None:
    x = np.array([[0.0], [2.0]], dtype=np.float32)
    centers = np.array([[1.0], [-1.0], [3.0], [1.0]], dtype=np.float32)
    labels, sq = cl_ops.kmeans_assign(x, centers)
    assert labels.tolist() == [0, 0] and sq.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize(("n", "p", "q"), [(37, 53, 3), (129, 10, 37), (1, 1, 1), (1000, 5, 17)])
def test_cross_covariance_matches_reference(n: int, p: int, q: int, centered: bool) -> None:
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((n, p)) + 3.0).astype(np.float32)
    b = (rng.standard_normal((n, q)) - 2.0).astype(np.float32)
    got, want = cl_ops.cross_covariance(a, b, centered), ref.cross_covariance(a, b, centered)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * np.sqrt(n))


def test_group_topk_matches_reference() -> None:
    rng = np.random.default_rng(8)
    n = 1001
    scores = rng.standard_normal(n).astype(np.float32)
    scores[::7] = np.round(scores[::7])  # many exact ties, incl. -0.0 vs 0.0
    scores[3] = -0.0
    scores[4] = 0.0
    groups = rng.integers(-3, 9, n)
    for k in (0, 1, 5, 37, 10_000, {2: 3, -3: 50, 8: 0, 5: 1000}):
        got = cl_ops.group_topk(scores, groups, k)
        want = ref.group_topk(scores, groups, k)
        np.testing.assert_array_equal(got, want)


def test_group_topk_semantics() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, 5.0, -1.0], dtype=np.float32)
    groups = np.array([0, 0, 0, 0, 1, 1])
    for ops in (cl_ops, ref):
        assert ops.group_topk(scores, groups, 2).tolist() == [1, 2, 4, 5]
        assert ops.group_topk(scores, groups, {0: 3}).tolist() == [1, 2, 3]
        assert ops.group_topk(np.zeros(5, np.float32), np.zeros(5, np.int64), 2).tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp", "cosine"])
@pytest.mark.parametrize(("n", "d"), [(37, 3), (53, 129), (16, 10), (1, 2)])
def test_fl_block_gains_and_add_match_reference(kind: str, n: int, d: int) -> None:
    x, _ = _data(n, 1, d, seed=9)
    weights = np.random.default_rng(10).random(n).astype(np.float32)
    for w in (None, weights):
        blocks = [ops.FacilityLocationBlock(x, None, kind, None, 0.05, w) for ops in (cl_ops, ref)]
        s = ref.similarity(x, x, kind, blocks[1].param, 0.05).astype(np.float64)
        cov = np.zeros(n)
        for j in [n - 1, 0, n // 2][: min(3, n)]:
            all_ids = np.arange(n)
            want = ((np.maximum(s - cov[None, :], 0.0)) * (1.0 if w is None else w[None, :])).sum(axis=1)
            for b in blocks:
                np.testing.assert_allclose(b.gains(all_ids), want, rtol=2e-5, atol=1e-3)
                np.testing.assert_allclose(b.gains(all_ids[::-1])[::-1], b.gains(all_ids), rtol=0, atol=0)
            if j in blocks[0].selected:
                continue
            for b in blocks:
                b.add(j)
            cov = np.maximum(cov, s[j])
        np.testing.assert_array_equal(blocks[0].assignment, blocks[1].assignment)
        np.testing.assert_allclose(blocks[0].coverage, blocks[1].coverage, rtol=1e-5, atol=1e-5)
        assert blocks[0].objective() == pytest.approx(blocks[1].objective(), rel=1e-5)
        for b in blocks:
            b.close()


def test_fl_block_gain_is_batch_independent() -> None:
    x, _ = _data(203, 1, 7, seed=11)
    block = cl_ops.FacilityLocationBlock(x)
    block.add(5)
    block.add(17)
    full = block.gains(np.arange(203))
    for ids in ([3], [3, 200, 1], list(range(0, 203, 7))):
        np.testing.assert_array_equal(block.gains(ids), full[ids])
    with pytest.raises(FailedPreconditionError):
        block.add(5)
    block.close()


def test_fl_block_candidates_differ_from_ground() -> None:
    ground, cand = _data(41, 13, 6, seed=12)
    for ops in (cl_ops, ref):
        b = ops.FacilityLocationBlock(ground, cand, "exp")
        assert (b.m, b.n) == (13, 41)
    got = cl_ops.FacilityLocationBlock(ground, cand, "exp").gains(np.arange(13))
    want = ref.FacilityLocationBlock(ground, cand, "exp").gains(np.arange(13))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _naive_picks(block: object, k: int) -> tuple[list[int], list[float]]:
    """k naive greedy steps through a block's gains / add (the order lazy and device greedy must reproduce)."""
    picks: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        ids = np.setdiff1d(np.arange(block.m), block.selected)  # type: ignore[attr-defined]
        g = block.gains(ids)  # type: ignore[attr-defined]
        b = int(np.argmax(g))
        gains.append(block.add(int(ids[b]), float(g[b])))  # type: ignore[attr-defined]
        picks.append(int(ids[b]))
    return picks, gains


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp", "cosine"])
@pytest.mark.parametrize(("m", "n", "d"), [(37, 37, 3), (53, 53, 129), (13, 41, 6), (1, 1, 2)])
def test_fl_lazy_greedy_kernel_matches_naive_and_reference(kind: str, m: int, n: int, d: int) -> None:
    ground, cand = _data(n, m, d, seed=13)
    cand = None if m == n else cand
    weights = np.random.default_rng(14).random(n).astype(np.float32)
    for w, rounded in ((None, False), (weights, False), (None, True)):
        g = np.round(ground) if rounded else ground  # many exact ties
        c = None if cand is None else (np.round(cand) if rounded else cand)
        k = max(1, (m * 2) // 3)
        naive_block = cl_ops.FacilityLocationBlock(g, c, kind, None, 0.05, w)
        naive, naive_gains = _naive_picks(naive_block, k)
        dev = cl_ops.FacilityLocationBlock(g, c, kind, None, 0.05, w)
        picks, gains, evals = dev.lazy_greedy(k)
        assert picks.tolist() == naive and gains.tolist() == naive_gains
        assert m <= evals <= m * k + m
        np.testing.assert_array_equal(dev.assignment, naive_block.assignment)
        np.testing.assert_array_equal(dev.best, naive_block.best)
        assert dev.selected == naive
        ref_block = ref.FacilityLocationBlock(g, c, kind, None, 0.05, w)
        ref_picks, ref_gains, _ = ref_block.lazy_greedy(k)
        assert ref_picks.tolist() == _naive_picks(ref.FacilityLocationBlock(g, c, kind, None, 0.05, w), k)[0]
        # the backends' float sums differ in the last bits, which may reorder (near-)ties, so compare the value
        assert ref_block.objective() == pytest.approx(dev.objective(), rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(np.sort(ref_gains), np.sort(gains), rtol=1e-4, atol=1e-3)
        for b in (naive_block, dev):
            b.close()


def test_fl_lazy_greedy_continues_after_adds() -> None:
    x, _ = _data(45, 1, 5, seed=15)
    a, b = cl_ops.FacilityLocationBlock(x), cl_ops.FacilityLocationBlock(x)
    for blk in (a, b):
        blk.add(7)
        blk.add(30)
    picks, _, _ = a.lazy_greedy(10)
    assert picks.tolist() == _naive_picks(b, 10)[0]
    assert a.selected[:2] == [7, 30] and 7 not in picks and 30 not in picks
    np.testing.assert_array_equal(a.assignment, b.assignment)
    with pytest.raises(InvalidArgumentError):
        a.lazy_greedy(45 - 12 + 1)
    assert a.lazy_greedy(0)[0].size == 0


@pytest.mark.parametrize("kind", ["max_minus_dist", "exp"])
@pytest.mark.parametrize(("m", "n", "d"), [(61, 61, 3), (29, 47, 17)])
def test_fl_stochastic_greedy_kernel_matches_reference(kind: str, m: int, n: int, d: int) -> None:
    ground, cand = _data(n, m, d, seed=16)
    cand = None if m == n else cand
    weights = np.random.default_rng(17).random(n).astype(np.float32)
    k = m - 3
    rng = np.random.default_rng(18)
    sample = 7
    positions = np.full((k, sample), -5, dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    for t in range(k):
        c = min(sample, m - t)
        positions[t, :c] = np.sort(rng.choice(m - t, size=c, replace=False))
        counts[t] = c
    for w in (None, weights):
        dev = cl_ops.FacilityLocationBlock(ground, cand, kind, None, 0.0, w)
        rb = ref.FacilityLocationBlock(ground, cand, kind, None, 0.0, w)
        picks, gains, evals = dev.stochastic_greedy(positions, counts)
        ref_picks, ref_gains, ref_evals = rb.stochastic_greedy(positions, counts)
        np.testing.assert_array_equal(picks, ref_picks)
        np.testing.assert_allclose(gains, ref_gains, rtol=1e-5, atol=1e-4)
        assert evals == ref_evals == counts.sum() and len(set(picks.tolist())) == k
        np.testing.assert_array_equal(dev.assignment, rb.assignment)
        # the same picks as the host loop over the gains of each step's sample
        host = cl_ops.FacilityLocationBlock(ground, cand, kind, None, 0.0, w)
        avail = np.ones(m, dtype=bool)
        for t in range(k):
            ids = np.flatnonzero(avail)[positions[t, : counts[t]]]
            g = host.gains(ids)
            j = int(ids[int(np.argmax(g))])
            assert j == picks[t] and float(g.max()) == gains[t]
            host.add(j)
            avail[j] = False
        for blk in (dev, host):
            blk.close()


@pytest.mark.parametrize("ops", [cl_ops, ref], ids=["opencl", "numpy"])
def test_stochastic_samples_are_checked(ops: object) -> None:
    block = ops.FacilityLocationBlock(_data(6, 1, 2)[0])  # type: ignore[attr-defined]
    ok = np.array([[0, 2], [1, 4]])
    for pos, cnt in (
        (ok, [2]),  # shape
        (ok, [0, 1]),  # empty sample
        (ok, [2, 3]),  # count over the width
        (np.array([[0, 6], [0, 1]]), [2, 2]),  # rank past the candidates left
        (np.array([[2, 2], [0, 1]]), [2, 2]),  # not strictly increasing
        (np.zeros((7, 1)), np.ones(7)),  # more steps than candidates
    ):
        with pytest.raises(InvalidArgumentError):
            block.stochastic_greedy(pos, cnt)  # type: ignore[attr-defined]
    picks, _, evals = block.stochastic_greedy(np.array([[0, 5], [4, -1]]), [2, 1])  # type: ignore[attr-defined]
    assert picks.size == 2 and evals == 3


@pytest.mark.parametrize("ops", [cl_ops, ref], ids=["opencl", "numpy"])
def test_bad_inputs_raise_invalid_argument(ops: object) -> None:
    good = np.ones((3, 4), dtype=np.float32)
    nan = good.copy()
    nan[1, 2] = np.nan
    cases = [
        lambda: ops.pairwise_sq_dists(np.zeros((0, 4), np.float32), good),  # type: ignore[attr-defined]
        lambda: ops.pairwise_sq_dists(good, np.ones((3, 5), np.float32)),  # type: ignore[attr-defined]
        lambda: ops.pairwise_sq_dists(nan, good),  # type: ignore[attr-defined]
        lambda: ops.cosine_similarity(good, np.ones(4, np.float32)),  # type: ignore[attr-defined]
        lambda: ops.similarity(good, good, "euclid"),  # type: ignore[attr-defined]
        lambda: ops.similarity(good, good, "exp", -1.0),  # type: ignore[attr-defined]
        lambda: ops.similarity(good, good, "exp", float("nan")),  # type: ignore[attr-defined]
        lambda: ops.kmeans_assign(good, np.ones((2, 3), np.float32)),  # type: ignore[attr-defined]
        lambda: ops.nearest_selected(good, nan),  # type: ignore[attr-defined]
        lambda: ops.cross_covariance(good, np.ones((2, 4), np.float32)),  # type: ignore[attr-defined]
        lambda: ops.group_topk(np.array([1.0, np.nan]), np.array([0, 0]), 1),  # type: ignore[attr-defined]
        lambda: ops.group_topk(np.ones(3), np.ones(2, np.int64), 1),  # type: ignore[attr-defined]
        lambda: ops.group_topk(np.ones(3), np.ones(3, np.int64), -1),  # type: ignore[attr-defined]
        lambda: ops.group_topk(np.ones(3), np.ones(3, np.int64), {7: 2}),  # type: ignore[attr-defined]
        lambda: ops.FacilityLocationBlock(good, None, "max_minus_dist", None, 0.0, np.ones(2)),  # type: ignore[attr-defined]
        lambda: ops.FacilityLocationBlock(good).gains([3]),  # type: ignore[attr-defined]
    ]
    for case in cases:
        with pytest.raises(InvalidArgumentError) as info:
            case()
        assert len(str(info.value)) > 20


def test_get_ops() -> None:
    assert get_ops("numpy") is ref
    assert get_ops("opencl") is cl_ops
    with pytest.raises(InvalidArgumentError, match=r"opencl.*numpy"):
        get_ops("cuda")


def test_pairwise_variant_env_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cl_ops.ENV_PAIRWISE, "fast")
    with pytest.raises(InvalidArgumentError, match="blocked"):
        cl_ops.pairwise_sq_dists(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
