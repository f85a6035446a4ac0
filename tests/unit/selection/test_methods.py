"""Method behaviour of crest, augment, sas and clipcov (and the k-means behind SAS), at small scale.

Every test runs the real selectors on the real kernels (OpenCL on PoCL by default); a few also run the numpy
reference backend and require the same answer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.selection import SelectionInputs, Subset, create
from nessa.selection.augment import penultimate_gradients
from nessa.selection.budget import largest_remainder
from nessa.selection.clipcov import clipcov_objective
from nessa.selection.crest import QuadraticLossModel, crest_adapt, crest_should_reselect
from nessa.selection.kmeans import kmeans

BACKENDS = ["opencl", "numpy"]


# ------------------------------------------------------------------------------------------------ helpers
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _blobs(rng: np.random.Generator, per: int, k: int, d: int, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.normal(size=(k, d)) * 3.0
    labels = np.repeat(np.arange(k), per)
    x = centers[labels] + spread * rng.normal(size=(k * per, d))
    return x.astype(np.float32), labels.astype(np.int64)


def _softmax_gradients(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Realistic last-layer gradients p − y (with a few sub-populations per class) and CE losses."""
    labels = rng.integers(0, c, size=n)
    modes = rng.normal(size=(c, 3, c)) * 2.0
    mode = rng.integers(0, 3, size=n)
    logits = modes[labels, mode] + rng.normal(size=(n, c)) * 0.7
    logits[np.arange(n), labels] += 1.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(c)[labels]
    loss = -np.log(p[np.arange(n), labels])
    return (p - onehot).astype(np.float32), labels.astype(np.int64), loss.astype(np.float32)


def _same_subset(a, b) -> None:
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ k-means
@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_recovers_planted_blobs(backend: str) -> None:
    rng = np.random.default_rng(0)
    x, truth = _blobs(rng, per=40, k=4, d=5)
    result = kmeans(x, 4, seed=3, backend=backend)
    assert result.converged
    # each planted blob maps to exactly one cluster and vice versa
    pairs = set(zip(truth.tolist(), result.labels.tolist(), strict=True))
    assert len(pairs) == 4 and len({p[1] for p in pairs}) == 4
    np.testing.assert_allclose(result.inertia, np.sum((x - result.centers[result.labels]) ** 2), rtol=1e-4)


def test_kmeans_backends_agree_and_seed_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    a = kmeans(x, 5, seed=7, backend="opencl")
    b = kmeans(x, 5, seed=7, backend="numpy")
    c = kmeans(x, 5, seed=7, backend="opencl")
    np.testing.assert_array_equal(a.labels, c.labels)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centers, b.centers, atol=1e-5)


@pytest.mark.parametrize(
    ("x", "k", "kwargs"),
    [
        (np.zeros((0, 3)), 1, {}),
        (np.ones(5), 1, {}),
        (np.ones((5, 2)), 6, {}),
        (np.ones((5, 2)), 0, {}),
        (np.full((5, 2), np.nan), 2, {}),
        (np.ones((5, 2)), 2, {"max_iter": 0}),
        (np.ones((5, 2)), 2, {"backend": "cuda"}),
    ],
)
def test_kmeans_bad_input(x, k, kwargs) -> None:
    with pytest.raises(InvalidArgumentError):
        kmeans(x, k, **kwargs)


# ------------------------------------------------------------------------------------------------ SAS
def _sas_brute_force(z: np.ndarray, groups: np.ndarray, k: int, threshold: float) -> dict[int, list[int]]:
    ids, sizes = np.unique(groups, return_counts=True)
    budgets = dict(zip(ids.tolist(), largest_remainder(k, sizes.tolist()), strict=True))
    out = {}
    for g in ids.tolist():
        idx = np.flatnonzero(groups == g)
        zn = _unit(z[idx].astype(np.float64))
        sim = zn @ zn.T
        sim[sim < threshold] = 0.0
        score = sim.sum(axis=1)
        rank = sorted(range(len(idx)), key=lambda i: (-score[i], i))
        out[g] = [int(idx[i]) for i in rank[: budgets[g]]]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_sas_ranking_equals_thresholded_centrality(backend: str) -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(90, 8)).astype(np.float32)
    groups = rng.integers(0, 3, size=90)
    k = 27
    subset = create("sas", threshold=0.1, backend=backend, block_size=16).select(
        SelectionInputs(embeddings=z, groups=groups), k, seed=0
    )
    expected = _sas_brute_force(z, groups, k, 0.1)
    assert len(subset) == k and len(set(subset.indices.tolist())) == k
    for g, want in expected.items():
        got = [int(i) for i in subset.indices if groups[i] == g]
        assert got == want  # same members, same rank order
    np.testing.assert_array_equal(subset.weights, np.ones(k, dtype=np.float32))


def _graph_cut(sim: np.ndarray, sel: list[int]) -> float:
    inside = np.zeros(len(sim), dtype=bool)
    inside[sel] = True
    return float(sim[~inside][:, inside].sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_sas_greedy_is_the_papers_greedy_on_the_graph_cut(backend: str) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(40, 5)).astype(np.float32)
    groups = np.repeat([0, 1], 20)
    subset = create("sas", objective="greedy", threshold=0.0, backend=backend).select(
        SelectionInputs(embeddings=z, groups=groups), 0.25, seed=0
    )
    total = 0.0
    for g in (0, 1):
        idx = np.flatnonzero(groups == g)
        zn = _unit(z[idx].astype(np.float64))
        sim = zn @ zn.T
        sim[sim < 0.0] = 0.0
        chosen: list[int] = []
        for _ in range(5):  # brute-force greedy: evaluate F(S ∪ {e}) for every e
            gains = [(_graph_cut(sim, [*chosen, e]), -e) for e in range(len(idx)) if e not in chosen]
            chosen.append(-max(gains)[1])
        got = [int(np.flatnonzero(idx == i)[0]) for i in subset.indices if groups[i] == g]
        assert got == chosen
        total += _graph_cut(sim, chosen)
    assert subset.objective == pytest.approx(total, rel=1e-4)


def test_sas_kmeans_latent_classes_and_determinism() -> None:
    rng = np.random.default_rng(4)
    z, truth = _blobs(rng, per=30, k=3, d=6)
    selector = create("sas", num_latent_classes=3)
    a = selector.select(SelectionInputs(embeddings=z), 0.2, seed=5)
    b = selector.select(SelectionInputs(embeddings=z), 0.2, seed=5)
    _same_subset(a, b)
    assert len(a) == 18
    # latent classes found = the planted blobs: 6 picks from each
    assert sorted(np.bincount(truth[a.indices]).tolist()) == [6, 6, 6]
    assert a.extras["latent_classes_from"] == "kmeans"


def test_sas_bad_input() -> None:
    z = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(InvalidArgumentError, match="groups"):
        create("sas").select(SelectionInputs(embeddings=z), 0.5)
    assert create("sas").required_inputs() == ("embeddings", "groups")
    assert create("sas", num_latent_classes=2).required_inputs() == ("embeddings",)
    with pytest.raises(InvalidArgumentError, match="both groups and num_latent_classes"):
        create("sas", num_latent_classes=2).select(SelectionInputs(embeddings=z, groups=np.zeros(20, int)), 0.5)
    with pytest.raises(InvalidArgumentError, match="needs inputs"):
        create("sas").select(SelectionInputs(groups=np.zeros(20, int)), 0.5)
    with pytest.raises(InvalidArgumentError, match="exceeds"):
        create("sas", num_latent_classes=30).select(SelectionInputs(embeddings=z), 0.5)
    for bad in ({"threshold": 2.0}, {"objective": "double"}, {"num_latent_classes": 0}, {"block_size": 0},
                {"backend": "gpu"}, {"colour": 1}):  # fmt: skip
        with pytest.raises(InvalidArgumentError):
            create("sas", **bad)
    with pytest.raises(InvalidArgumentError, match="budget"):
        create("sas").select(SelectionInputs(embeddings=z, groups=np.zeros(20, int)), 1.5)


# ------------------------------------------------------------------------------------------------ ClipCov
def _planted_pairs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image/caption pairs of 4 classes with a modality gap; 15 % are mismatched pairs whose caption is about
    another class but which share a pair-specific spurious direction, giving them a *high* CLIP score."""
    rng = np.random.default_rng(seed)
    d, k, per = 32, 4, 50
    n = k * per
    semantic = _unit(rng.normal(size=(k, d)))
    m_img, m_txt = 0.8 * _unit(rng.normal(size=(2, d)))
    classes = np.repeat(np.arange(k), per)
    caption_class = classes.copy()
    bad = rng.choice(n, size=int(0.15 * n), replace=False)
    caption_class[bad] = (classes[bad] + rng.integers(1, k, size=len(bad))) % k
    spurious = np.zeros((n, d))
    spurious[bad] = 1.6 * _unit(rng.normal(size=(len(bad), d)))
    u = semantic[classes] + m_img + spurious + 0.35 * rng.normal(size=(n, d))
    v = semantic[caption_class] + m_txt + spurious + 0.35 * rng.normal(size=(n, d))
    mismatched = np.zeros(n, dtype=bool)
    mismatched[bad] = True
    names = semantic + m_txt  # class-name text embeddings live in the text region
    return u.astype(np.float32), v.astype(np.float32), classes, mismatched, names.astype(np.float32)


def test_clipcov_keeps_fewer_mismatched_pairs_than_clip_score() -> None:
    ours, theirs = [], []
    for seed in range(3):
        u, v, _, mismatched, names = _planted_pairs(seed)
        k = 40
        clip_score = np.einsum("ij,ij->i", _unit(u), _unit(v))
        top = np.argsort(-clip_score)[:k]
        subset = create("clipcov", class_name_embeddings=names.tolist(), update_every=5).select(
            SelectionInputs(embeddings=u, caption_embeddings=v), k, seed=0
        )
        assert len(subset) == k
        assert subset.extras["latent_classes_from"] == "zero_shot"
        ours.append(int(mismatched[subset.indices].sum()))
        theirs.append(int(mismatched[top].sum()))
    assert min(theirs) >= 10  # the planted pairs do fool the CLIP score
    assert all(a < b for a, b in zip(ours, theirs, strict=True)), (ours, theirs)
    assert sum(ours) <= 0.5 * sum(theirs), (ours, theirs)


def _clipcov_reference_objective(u, v, classes, names, sel, threshold, alpha, inter_w) -> float:
    """F of the module docstring written out directly (pairwise sums, float64)."""
    u, v = _unit(u.astype(np.float64)), _unit(v.astype(np.float64))
    m = u @ v.T
    m[m <= threshold] = 0.0
    sim = m + m.T
    ids = np.unique(classes)
    sel = np.asarray(sel)
    total = 0.0
    for g in ids:
        vk = np.flatnonzero(classes == g)
        sk = sel[classes[sel] == g]
        nk = len(vk)
        total += (sim[np.ix_(sk, vk)].sum() - 0.5 * sim[np.ix_(sk, sk)].sum()) / nk  # F_class
        total -= sim[np.ix_(sk, vk)].sum() / nk**2  # F_reg
        total += (2.0 * np.einsum("ij,ij->i", u[sk], v[sk])).sum()  # F_self (raw cosine)
        if names is not None:
            t = _unit(names.astype(np.float64))
            total += alpha * (v[sk] @ t[g]).sum() * (1 - 1 / nk)
        others = [h for h in ids if h != g]
        for i in sk:
            inter = np.mean([np.mean(u[i] @ v[classes == h].T) + np.mean(v[i] @ u[classes == h].T) for h in others])
            total -= inter_w * inter
    return float(total)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipcov_exact_greedy_matches_brute_force(backend: str) -> None:
    u, v, _, _, names = _planted_pairs(7)
    pick = np.random.default_rng(0).choice(len(u), size=36, replace=False)
    u, v = u[pick], v[pick]
    classes = np.asarray([0, 1, 2] * 12)
    selector = create(
        "clipcov", update_every=1, class_name_embeddings=names[:3].tolist(), threshold=0.1, backend=backend
    )
    subset = selector.select(SelectionInputs(embeddings=u, caption_embeddings=v, groups=classes), 6, seed=0)
    chosen: list[int] = []
    for _ in range(6):
        values = [
            (_clipcov_reference_objective(u, v, classes, names[:3], [*chosen, e], 0.1, 0.5, 1.0), -e)
            for e in range(len(u))
            if e not in chosen
        ]
        chosen.append(-max(values)[1])
    assert subset.indices.tolist() == chosen
    want = _clipcov_reference_objective(u, v, classes, names[:3], chosen, 0.1, 0.5, 1.0)
    assert subset.objective == pytest.approx(want, rel=1e-4, abs=1e-4)
    got = clipcov_objective(u, v, classes, chosen, class_name_embeddings=names[:3], threshold=0.1, label_weight=0.5,
                            backend=backend)  # fmt: skip
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_clipcov_batched_updates_determinism_and_budget() -> None:
    u, v, classes, _, _ = _planted_pairs(1)
    inputs = SelectionInputs(embeddings=u, caption_embeddings=v, groups=classes)
    a = create("clipcov").select(inputs, 0.1, seed=0)
    b = create("clipcov").select(inputs, 0.1, seed=0)
    _same_subset(a, b)
    assert len(a) == 20 and len(set(a.indices.tolist())) == 20
    assert a.extras["label_weight"] == 0.0  # no class names: no label term
    assert a.extras["latent_classes_from"] == "groups"
    exact = create("clipcov", update_every=1).select(inputs, 0.1, seed=0)
    assert exact.objective >= a.objective - 1e-6  # the exact greedy is at least as good here


def test_clipcov_bad_input() -> None:
    u, v, classes, _, names = _planted_pairs(0)
    with pytest.raises(InvalidArgumentError, match="needs inputs"):
        create("clipcov").select(SelectionInputs(embeddings=u, groups=classes), 0.1)
    with pytest.raises(InvalidArgumentError, match="dimension"):
        create("clipcov").select(SelectionInputs(embeddings=u, caption_embeddings=v[:, :5], groups=classes), 0.1)
    with pytest.raises(InvalidArgumentError, match="groups"):
        create("clipcov").select(SelectionInputs(embeddings=u, caption_embeddings=v), 0.1)
    assert create("clipcov", class_name_embeddings=names.tolist()).required_inputs() == (
        "embeddings",
        "caption_embeddings",
    )
    with pytest.raises(InvalidArgumentError, match="class_name_embeddings"):
        create("clipcov", label_weight=0.5)
    with pytest.raises(InvalidArgumentError, match="dimension"):
        create("clipcov", class_name_embeddings=[[1.0, 0.0]]).select(
            SelectionInputs(embeddings=u, caption_embeddings=v), 0.1
        )
    with pytest.raises(InvalidArgumentError, match="index"):
        create("clipcov", class_name_embeddings=names[:2].tolist()).select(
            SelectionInputs(embeddings=u, caption_embeddings=v, groups=classes), 0.1
        )
    zero = u.copy()
    zero[3] = 0.0
    with pytest.raises(InvalidArgumentError, match="zero norm"):
        create("clipcov").select(SelectionInputs(embeddings=zero, caption_embeddings=v, groups=classes), 0.1)
    for bad in ({"update_every": 0}, {"threshold": "x"}, {"inter_weight": float("nan")},
                {"class_name_embeddings": [1.0, 2.0]}, {"backend": "fpga"}):  # fmt: skip
        with pytest.raises(InvalidArgumentError):
            create("clipcov", **bad)


# ------------------------------------------------------------------------------------------------ CREST
def test_crest_minibatch_coresets_estimate_the_pool_gradient_better_than_random() -> None:
    ours, random = [], []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        grads, labels, losses = _softmax_gradients(rng, 3000, 10)
        subset = create("crest", minibatch_size=32, pool_size=160).select(
            SelectionInputs(labels=labels, gradients=grads, losses=losses), 96, seed=seed
        )
        pools = np.concatenate([np.asarray(p) for p in subset.extras["pools"]])
        pool_mean = grads[pools].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(subset.extras["pool_mean_gradient"], pool_mean, atol=1e-6)
        w = subset.weights.astype(np.float64)
        mine = (w[:, None] * grads[subset.indices]).sum(axis=0) / w.sum()
        assert subset.extras["gradient_error"] == pytest.approx(np.linalg.norm(mine - pool_mean), rel=1e-5)
        ours.append(subset.extras["gradient_error"])
        draws = [rng.choice(pools, size=len(subset), replace=False) for _ in range(20)]
        random.append(np.mean([np.linalg.norm(grads[d].mean(axis=0) - pool_mean) for d in draws]))
    assert np.mean(ours) < 0.7 * np.mean(random), (ours, random)


def test_crest_each_minibatch_coreset_beats_a_random_minibatch_of_its_pool() -> None:
    """Per pool (the paper's claim): the weighted mini-batch coreset's mean gradient is closer to the pool's mean
    gradient than that of a uniform random mini-batch of the same size from the same pool."""
    ours, random = [], []
    for seed in range(4):
        rng = np.random.default_rng(200 + seed)
        grads, labels, _ = _softmax_gradients(rng, 4000, 10)
        subset = create("crest", minibatch_size=40, pool_size=400).select(
            SelectionInputs(labels=labels, gradients=grads), 200, seed=seed
        )
        position = {int(i): j for j, i in enumerate(subset.indices.tolist())}
        assert len(subset.extras["minibatches"]) == len(subset.extras["pools"]) == 5
        for batch, pool in zip(subset.extras["minibatches"], subset.extras["pools"], strict=True):
            batch, pool = np.asarray(batch), np.asarray(pool)
            assert len(batch) == 40 and set(batch.tolist()) <= set(pool.tolist())
            target = grads[pool].astype(np.float64).mean(axis=0)
            w = subset.weights[[position[int(i)] for i in batch]].astype(np.float64)
            est = (w[:, None] * grads[batch]).sum(axis=0) / w.sum()
            ours.append(np.linalg.norm(est - target))
            draws = [rng.choice(pool, size=len(batch), replace=False) for _ in range(30)]
            random.append(np.mean([np.linalg.norm(grads[d].astype(np.float64).mean(axis=0) - target) for d in draws]))
    assert np.mean(ours) < 0.7 * np.mean(random), (np.mean(ours), np.mean(random))
    assert np.mean(np.asarray(ours) < np.asarray(random)) >= 0.8  # most single pools, not only on average


def test_crest_structure_budget_and_determinism() -> None:
    rng = np.random.default_rng(5)
    grads, labels, losses = _softmax_gradients(rng, 2000, 10)
    inputs = SelectionInputs(labels=labels, gradients=grads, losses=losses)
    a = create("crest", minibatch_size=64).select(inputs, 0.1, seed=3)
    b = create("crest", minibatch_size=64).select(inputs, 0.1, seed=3)
    _same_subset(a, b)
    assert len(a) == 200 and len(set(a.indices.tolist())) == 200  # exactly the budget
    assert a.extras["num_pools"] == 4  # ceil(200 / 64)
    assert [len(m) for m in a.extras["minibatches"]] == [50, 50, 50, 50]
    pools = [set(p) for p in a.extras["pools"]]
    for batch, pool in zip(a.extras["minibatches"], pools, strict=True):
        assert set(batch) <= pool
        assert len(pool) >= 256  # default r = max(1 % of N, 4·m)
        counts = np.bincount(labels[batch], minlength=10)
        assert counts.max() - counts.min() <= 1  # equal per-class budgets, trimmed to exactly m
    assert sum(len(p) for p in pools) == len(set().union(*pools))  # disjoint
    assert a.weights.mean() == pytest.approx(1.0, rel=1e-5)
    c = create("crest", minibatch_size=64).select(inputs, 0.1, seed=4)
    assert set(c.indices.tolist()) != set(a.indices.tolist())
    numpy_run = create("crest", minibatch_size=64, backend="numpy").select(inputs, 0.1, seed=3)
    np.testing.assert_array_equal(numpy_run.indices, a.indices)


def test_crest_drops_examples_learned_for_the_window() -> None:
    rng = np.random.default_rng(6)
    grads, labels, losses = _softmax_gradients(rng, 600, 3)
    learned = rng.choice(600, size=150, replace=False)
    low = losses.copy()
    low[learned] = 0.01
    below = int(np.sum(low < 0.1))  # the planted ones plus any naturally below α = 0.1
    selector = create("crest", minibatch_size=30, pool_size=120, drop_learned=True, learned_window=3,
                      learned_min_keep=0.0)  # fmt: skip
    seen_learned = False
    for call in range(3):
        subset = selector.select(SelectionInputs(labels=labels, gradients=grads, losses=low), 90, seed=call)
        in_pools = np.concatenate([np.asarray(p) for p in subset.extras["pools"]])
        if call < 2:  # not yet below α for the whole window: still candidates
            assert subset.extras["learned_dropped"] == 0
            seen_learned |= bool(np.isin(learned, in_pools).any())
        else:
            assert subset.extras["learned_dropped"] == below
            assert not np.isin(learned, in_pools).any()
            assert len(subset) == 90
    assert seen_learned
    # one loss above α resets the streak: the planted examples are candidates again
    back = low.copy()
    back[learned] = 5.0
    subset = selector.select(SelectionInputs(labels=labels, gradients=grads, losses=back), 90, seed=9)
    assert subset.extras["learned_dropped"] == below - 150
    state = selector.state_dict()
    other = create("crest", minibatch_size=30, pool_size=120, drop_learned=True, learned_window=3,
                   learned_min_keep=0.0)  # fmt: skip
    other.load_state_dict(state)
    assert other.state_dict() == state
    # a class that would be left (almost) empty keeps all its examples
    keep = create("crest", minibatch_size=30, drop_learned=True, learned_window=1, learned_min_keep=0.5)
    all_low = np.where(labels == 0, 0.01, losses)
    subset = keep.select(SelectionInputs(labels=labels, gradients=grads, losses=all_low), 90, seed=0)
    assert np.any(labels[subset.indices] == 0)


def test_crest_quadratic_model_and_trigger() -> None:
    g = np.array([1.0, -2.0, 0.5])
    h = np.array([2.0, 1.0, 4.0])
    model = QuadraticLossModel(start_loss=1.0, gradient=g, curvature=h)
    delta = np.array([-0.1, 0.1, 0.0])
    want = 1.0 + (g @ delta) + 0.5 * (delta * h * delta).sum()
    assert model.predict(delta) == pytest.approx(want)
    assert model.relative_error(delta, want * 1.2) == pytest.approx(abs(want - want * 1.2) / (want * 1.2))
    assert model.should_reselect(delta, want * 1.2, tau=0.1)
    assert not model.should_reselect(delta, want * 1.05, tau=0.1)
    assert crest_should_reselect(0.0, 0.0, 0.05) is False
    import torch

    tmodel = QuadraticLossModel(1.0, torch.tensor(g), torch.tensor(h))
    assert tmodel.predict(torch.tensor(delta)) == pytest.approx(want)
    assert crest_adapt(4.0, 2.0, interval_mul=1, batch_num_mul=5, steps_per_epoch=40) == (2, 10)
    assert crest_adapt(1.0, 4.0, steps_per_epoch=3) == (1, 3)
    with pytest.raises(InvalidArgumentError):
        crest_should_reselect(1.0, -1.0, 0.1)
    with pytest.raises(InvalidArgumentError):
        crest_should_reselect(1.0, 1.0, 0.0)
    with pytest.raises(InvalidArgumentError):
        model.predict(np.zeros(4))
    with pytest.raises(InvalidArgumentError):
        QuadraticLossModel(1.0, g, h[:2])
    with pytest.raises(InvalidArgumentError):
        crest_adapt(0.0, 1.0, steps_per_epoch=3)


def test_crest_bad_input() -> None:
    rng = np.random.default_rng(0)
    grads, labels, _ = _softmax_gradients(rng, 300, 3)
    with pytest.raises(InvalidArgumentError, match="needs inputs"):
        create("crest").select(SelectionInputs(labels=labels), 0.1)
    with pytest.raises(InvalidArgumentError, match="losses"):
        create("crest", drop_learned=True).select(SelectionInputs(labels=labels, gradients=grads), 0.1)
    assert create("crest", drop_learned=True).required_inputs() == ("labels", "gradients", "losses")
    selector = create("crest", minibatch_size=16)
    selector.select(SelectionInputs(labels=labels, gradients=grads), 0.1)
    with pytest.raises(FailedPreconditionError, match="candidates"):
        selector.select(SelectionInputs(labels=labels[:200], gradients=grads[:200]), 0.1)
    for bad in ({"minibatch_size": 0}, {"pool_size": 1.5}, {"pool_size": -3}, {"class_rule": "odd"},
                {"optimizer": "fast"}, {"learned_window": 0}, {"learned_threshold": float("inf")},
                {"drop_learned": "yes"}, {"backend": "gpu"}, {"similarity_param": -1.0}):  # fmt: skip
        with pytest.raises(InvalidArgumentError):
            create("crest", **bad)


# ------------------------------------------------------------------------------------------------ augment
def _cluster_sizes(grads: np.ndarray, labels: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """γ_j: per class, the number of examples whose nearest chosen element (Euclidean, so exp kernel) is j."""
    gamma = np.zeros(len(chosen))
    for c in np.unique(labels):
        mine = np.flatnonzero(labels == c)
        cand = [j for j, i in enumerate(chosen) if labels[i] == c]
        d = np.linalg.norm(grads[mine][:, None, :] - grads[chosen[cand]][None, :, :], axis=2)
        near = np.argmin(d, axis=1)
        for j in near:
            gamma[cand[j]] += 1
    return gamma


def test_augment_weights_and_augment_set_follow_the_paper() -> None:
    rng = np.random.default_rng(8)
    grads, labels, _ = _softmax_gradients(rng, 400, 4)
    inputs = SelectionInputs(labels=labels, gradients=grads)
    full = create("augment", main_set="full", num_augmentations=2).select(inputs, 0.1, seed=0)
    core = np.asarray(full.extras["augment_indices"])
    assert len(core) == 40 and len(set(core.tolist())) == 40
    craig = create("craig", similarity="exp").select(inputs, 0.1, seed=0)
    np.testing.assert_array_equal(core, craig.indices)  # the coreset is CRAIG's on p − y (exp kernel)
    gamma = _cluster_sizes(grads, labels, core)
    assert gamma.sum() == 400
    np.testing.assert_allclose(full.extras["augment_weights"], gamma / 2, rtol=1e-5)  # γ_j / r
    np.testing.assert_array_equal(full.indices, np.arange(400))
    np.testing.assert_array_equal(full.weights, np.ones(400))
    assert full.extras["num_augmentations"] == 2

    only = create("augment").select(inputs, 0.1, seed=0)  # main set = the coreset itself
    np.testing.assert_array_equal(only.indices, core)
    np.testing.assert_allclose(only.weights, gamma * 40 / 400, rtol=1e-5)  # mean-1 weights
    np.testing.assert_allclose(only.extras["augment_weights"], only.weights, rtol=1e-5)  # w_j / r with r = 1

    ones = create("augment", augment_weights="ones").select(inputs, 0.1, seed=0)
    np.testing.assert_array_equal(ones.extras["augment_weights"], np.ones(40))

    rand = create("augment", main_set="random", main_size=0.5).select(inputs, 0.1, seed=1)
    assert len(rand) == 200 and len(set(rand.indices.tolist())) == 200
    assert sum(rand.extras["augment_weights"]) == pytest.approx(200, rel=1e-5)
    again = create("augment", main_set="random", main_size=0.5).select(inputs, 0.1, seed=1)
    _same_subset(rand, again)
    assert again.extras == rand.extras


def test_augment_penultimate_gradients() -> None:
    rng = np.random.default_rng(9)
    grads, labels, _ = _softmax_gradients(rng, 120, 3)
    h = rng.normal(size=(120, 4)).astype(np.float32)
    outer = penultimate_gradients(grads, h)
    assert outer.shape == (120, 12)
    np.testing.assert_allclose(outer[5], np.outer(grads[5], h[5]).reshape(-1), rtol=1e-6)
    subset = create("augment", gradient="penultimate").select(
        SelectionInputs(labels=labels, gradients=grads, embeddings=h), 12, seed=0
    )
    craig = create("craig", similarity="exp").select(SelectionInputs(labels=labels, gradients=outer), 12, seed=0)
    np.testing.assert_array_equal(subset.extras["augment_indices"], craig.indices)


def test_augment_bad_input() -> None:
    rng = np.random.default_rng(0)
    grads, labels, _ = _softmax_gradients(rng, 100, 3)
    with pytest.raises(InvalidArgumentError, match="needs inputs"):
        create("augment").select(SelectionInputs(labels=labels), 0.1)
    with pytest.raises(InvalidArgumentError, match="embeddings"):
        create("augment", gradient="penultimate").select(SelectionInputs(labels=labels, gradients=grads), 0.1)
    assert create("augment", gradient="penultimate").required_inputs() == ("labels", "gradients", "embeddings")
    bad_options = [
        {"main_set": "half"},
        {"main_set": "random"},
        {"main_size": 0.5},
        {"num_augmentations": 0},
        {"augment_weights": "sqrt"},
        {"gradient": "full"},
        {"optimizer": "quick"},
        {"backend": "tpu"},
    ]
    for bad in bad_options:
        with pytest.raises(InvalidArgumentError):
            create("augment", **bad)
    with pytest.raises(InvalidArgumentError, match="budget"):
        create("augment").select(SelectionInputs(labels=labels, gradients=grads), 0)
    assert math.isfinite(create("augment").select(SelectionInputs(labels=labels, gradients=grads), 0.2).objective)


def test_crest_reads_features_only_in_the_rows_it_declares() -> None:
    rng = np.random.default_rng(11)
    grads, labels, _losses = _softmax_gradients(rng, 5000, 10)
    crest = create("crest", minibatch_size=64)
    rows = crest.feature_rows(labels, 192, seed=2)
    assert rows is not None and 0 < len(rows) < len(labels) // 2
    assert np.array_equal(rows, np.unique(rows))
    full = crest.select(SelectionInputs(labels=labels, gradients=grads), 192, seed=2)
    assert set(full.indices.tolist()) <= set(rows.tolist())
    assert sorted(set().union(*map(set, full.extras["pools"]))) == rows.tolist()
    # Other rows hold anything (here zeros): the result does not change.
    masked = np.zeros_like(grads)
    masked[rows] = grads[rows]
    part = create("crest", minibatch_size=64).select(SelectionInputs(labels=labels, gradients=masked), 192, seed=2)
    np.testing.assert_array_equal(part.indices, full.indices)
    np.testing.assert_array_equal(part.weights, full.weights)
    assert part.extras["gradient_error"] == full.extras["gradient_error"]
    # drop_learned reads every loss; methods that look at every candidate declare all rows (None).
    assert create("crest", drop_learned=True).feature_rows(labels, 192, seed=2) is None
    assert create("craig").feature_rows(labels, 192, seed=2) is None


def _notebook_loop(u, v, classes, k, update_every, deductions, threshold=0.0):  # type: ignore[no-untyped-def]
    """``clip_core.ipynb``'s greedy written out plainly (brute-force argmax per pick), on our score terms.

    Every ``update_every`` picks from class k: subtract from the class's scores the diversity penalty of the new
    picks, Σ_{j∈S_k} raw_cross_j / |V_k| over all of the class's picks, and the label deduction (0 here: no class
    names). raw_cross_j = Σ_{i∈V_k} sim(j, i) / |V_k| (the stand-in for the unreleased file).
    """
    uu, vv = _unit(u.astype(np.float64)), _unit(v.astype(np.float64))
    m = uu @ vv.T
    m[m <= threshold] = 0.0
    sim = m + m.T
    n = len(u)
    size = np.array([np.sum(classes == classes[i]) for i in range(n)], dtype=np.float64)
    same = classes[:, None] == classes[None, :]
    cover = (sim * same).sum(axis=1)
    raw_cross = cover / size
    ids = np.unique(classes)
    mu = {g: uu[classes == g].mean(axis=0) for g in ids}
    mv = {g: vv[classes == g].mean(axis=0) for g in ids}
    inter = np.array([np.mean([uu[i] @ mv[h] + vv[i] @ mu[h] for h in ids if h != classes[i]]) for i in range(n)])
    clip = 2.0 * np.einsum("ij,ij->i", uu, vv)
    diag = np.where(clip / 2 > threshold, clip / 2, 0.0)
    scores = cover / size - cover / size**2 + clip - inter - diag / size
    chosen: list[int] = []
    taken: dict[int, list[int]] = {int(g): [] for g in ids}
    new: dict[int, list[int]] = {int(g): [] for g in ids}
    for _ in range(k):
        live = scores.copy()
        live[chosen] = -np.inf
        j = int(np.argmax(live))
        chosen.append(j)
        g = int(classes[j])
        taken[g].append(j)
        new[g].append(j)
        if len(new[g]) == update_every:
            rest = np.flatnonzero(classes == g)
            scores[rest] -= (m[np.ix_(rest, new[g])].sum(axis=1) + m[np.ix_(new[g], rest)].sum(axis=0)) / size[rest]
            if deductions:
                scores[rest] -= raw_cross[taken[g]].sum() / size[rest]
            new[g] = []
    return np.asarray(chosen)


@pytest.mark.parametrize("deductions", [False, True])
def test_clipcov_class_deductions_follow_the_notebook_loop(deductions: bool) -> None:
    u, v, classes, _, _ = _planted_pairs(3)
    inputs = SelectionInputs(embeddings=u, caption_embeddings=v, groups=classes)
    k = len(u) // 4
    got = create("clipcov", update_every=5, class_deductions=deductions, backend="numpy").select(inputs, k)
    want = _notebook_loop(u, v, classes, k, 5, deductions)
    assert got.indices.tolist() == want.tolist()
    assert got.extras["class_deductions"] is deductions


def test_clipcov_class_deductions_balance_the_classes() -> None:
    """The notebook's deductions penalize a class by how much it already holds: the counts even out."""
    u, v, classes, _, _ = _planted_pairs(4)
    # make one class much more central (higher scores) than the others
    favoured = classes == classes[0]
    v = v.copy()
    v[favoured] = 0.3 * v[favoured] + 0.7 * u[favoured]
    inputs = SelectionInputs(embeddings=u, caption_embeddings=v, groups=classes)
    k = len(u) // 3

    def spread(s: Subset) -> int:
        counts = list(s.extras["latent_class_counts"].values())
        return max(counts) - min(counts)

    plain = create("clipcov", update_every=5).select(inputs, k)
    balanced = create("clipcov", update_every=5, class_deductions=True).select(inputs, k)
    assert spread(balanced) < spread(plain)
