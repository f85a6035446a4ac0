"""The facility-location engine shared by CRAIG, AdaCore, CREST and the augmentation coresets.

Maximizes F(S) = Σ_{i∈V} w_i · max(0, max_{j∈S} s_ij) subject to |S| ≤ k, where s is one of the similarity kinds
of :mod:`nessa.accel.reference.selection` (CRAIG's M − ‖·‖, submodlib's exp(−‖·‖/D), thresholded cosine).

* **Paper.** Greedy gives F(S) ≥ (1 − 1/e)·OPT; lazy greedy returns the same set with fewer gain evaluations;
  stochastic greedy (Mirzasoleiman et al. 2015) evaluates a random sample of ceil((n/k)·ln(1/ε)) candidates per
  step for (1 − 1/e − ε) in expectation; GreeDi (Mirzasoleiman et al. 2013) selects k per random part, then runs
  greedy again on the union, weighting each element by its stage-1 cluster size.
* **Code (CRAIG/CREST).** Dense n×n per-class similarity in numpy, a Python heap lazy greedy (CRAIG), submodlib's
  C++ LazyGreedy (CREST), ``util.greedi`` / ``greedy_merge`` for large ground sets; CREST switches to GreeDi above
  50,000 elements.
* **Ours.** The similarity block is computed once per ground set **on the device** (OpenCL kernels, or the numpy
  reference when asked) and stays there across greedy steps (:class:`FacilityLocationBlock` of the backend);
  lazy and stochastic greedy run **entirely on the device**, k picks per launch (``block.lazy_greedy`` /
  ``block.stochastic_greedy``; naive greedy drives ``gains`` / ``add`` from the host). Lazy greedy keeps a heap of
  bounds and accepts the top only when its gain is fresh, so the order is **exactly** the naive greedy order: every
  gain is computed by the same fixed-order reduction, coverage only grows, so a stale gain is a true float upper
  bound, and ties go to the lowest index in both. Stochastic greedy's samples are drawn on the host up front
  (:func:`stochastic_samples`, the same draws as a per-step ``rng.choice``) as ranks among the candidates left.
  Above ``block_size`` elements we run two-round GreeDi on random parts of ≤ ``block_size`` (memory
  O(n·d + block²), no n×n matrix);
  when the stage-1 union would itself exceed ``block_size`` (k per part is too many), the budget is instead split
  over the parts in proportion to their sizes and the per-part greedy orders are interleaved ("partitioned"). In
  both cases the final assignment, cluster sizes and objective are computed over all n elements against the chosen
  set with a fused nearest-selected kernel (O(n·k·d) time, O(n) memory; the numpy reference, which builds a
  rows × k block, is called on row chunks of at most block_size² / k rows so it stays within one block's memory).

``max_minus_dist`` M: given by ``similarity_param``, else the largest distance of the dense block (CRAIG). Under
GreeDi, M = 2·max_i ‖x_i − x̄‖ (a bound on every pairwise distance, computed in O(n·d)) is used for every stage and
for the final objective. Greedy picks do not depend on M as long as M ≥ every distance (after the first pick all
gains are Σ_i max(0, d(i,S) − d_ij)), so this only changes the reported objective's constant.

Weights (``weight_rule``): ``"craig"`` counts every ground element toward its most similar selected element (ties:
the earlier pick); ``"submodlib"`` (CREST/augmentation path) does not count elements whose best similarity is ≤ 0
and gives a selected element with zero count weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nessa.accel.reference.selection import check_features, check_kind, is_int, is_real, resolve_param
from nessa.errors import InvalidArgumentError
from nessa.selection.budget import largest_remainder

__all__ = [
    "OPTIMIZERS",
    "WEIGHT_RULES",
    "FacilityLocationResult",
    "greedy",
    "interleave",
    "interleave_positions",
    "maximize",
    "mean_one_weights",
    "stochastic_samples",
]

#: Greedy variants understood by :func:`maximize`.
OPTIMIZERS = ("naive", "lazy", "stochastic")
#: Cluster-size rules (see the module docstring).
WEIGHT_RULES = ("craig", "submodlib")


class _Block(Protocol):
    m: int
    n: int
    param: float | None

    def gains(self, candidate_ids: Any) -> np.ndarray: ...

    def add(self, j: int, gain: float | None = None) -> float: ...

    def lazy_greedy(self, k: int) -> tuple[np.ndarray, np.ndarray, int]: ...

    def stochastic_greedy(self, positions: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]: ...

    @property
    def best(self) -> np.ndarray: ...

    @property
    def assignment(self) -> np.ndarray: ...

    def objective(self) -> float: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class FacilityLocationResult:
    """What :func:`maximize` returns.

    Attributes:
        indices: int64 (k,) positions into the features, in greedy order (unique).
        cluster_sizes: float64 (k,) the number of ground elements whose most similar selected element is each
            index (per ``weight_rule``).
        objective: F(S) over all n elements.
        assignment: int64 (n,) position in ``indices`` of each element's most similar selected element.
        gains: float64 (k,) the marginal gain of each pick when it was made (of the last greedy round).
        stats: how it ran: ``mode`` ("dense", "greedi", "partitioned"), ``parts``, ``max_block`` (largest ground
            set held as a block), ``gain_evaluations``, ``param`` (M or D used).
    """

    indices: np.ndarray
    cluster_sizes: np.ndarray
    objective: float
    assignment: np.ndarray
    gains: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def mean_one_weights(cluster_sizes: np.ndarray) -> np.ndarray:
    """Normalize cluster sizes to mean 1 over the subset: w = γ·|S|/Σγ (all ones when Σγ = 0), float32.

    Raises:
        InvalidArgumentError: negative or non-finite sizes.
    """
    g = np.asarray(cluster_sizes, dtype=np.float64).reshape(-1)
    if g.size == 0:
        return np.zeros(0, dtype=np.float32)
    if not np.all(np.isfinite(g)) or (g < 0).any():
        raise InvalidArgumentError("cluster sizes must be finite and >= 0")
    total = g.sum()
    if total <= 0:
        return np.ones(g.size, dtype=np.float32)
    return (g * (g.size / total)).astype(np.float32)


def interleave_positions(lengths: list[int]) -> np.ndarray:
    """The permutation of the concatenation of groups of the given lengths that :func:`interleave` applies.

    The r-th element of a group of size k_g gets the key (r + ½)/k_g; elements are sorted by key, ties by group
    order. Equal sizes give plain round-robin (1st of each group, then 2nd, …); unequal sizes spread each group
    in proportion to its size (CRAIG's class-ratio-weighted merge), so any prefix stays balanced.

    Args:
        lengths: the size of each group (>= 0).

    Returns:
        int64 positions into the concatenation, in merged order.
    """
    sizes = [int(v) for v in lengths]
    total = sum(sizes)
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.concatenate([(np.arange(v) + 0.5) / v for v in sizes if v > 0])
    group = np.concatenate([np.full(v, g) for g, v in enumerate(sizes) if v > 0])
    return np.lexsort((group, keys)).astype(np.int64)


def interleave(orders: list[np.ndarray]) -> np.ndarray:
    """Merge per-group greedy orders so that any prefix is balanced (CRAIG's round-robin class merge).

    Args:
        orders: one 1-D array of indices per group.

    Returns:
        The merged int64 indices (see :func:`interleave_positions` for the order).
    """
    parts = [np.asarray(o, dtype=np.int64).reshape(-1) for o in orders]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts)[interleave_positions([p.size for p in parts])]


# ------------------------------------------------------------------------------------------------ greedy
def _naive(block: _Block, k: int) -> tuple[list[int], list[float], int]:
    avail = np.ones(block.m, dtype=bool)
    picks: list[int] = []
    gains: list[float] = []
    evals = 0
    for _ in range(k):
        ids = np.flatnonzero(avail)
        g = block.gains(ids)
        evals += ids.size
        b = int(np.argmax(g))  # first maximum = lowest index
        j = int(ids[b])
        gains.append(block.add(j, float(g[b])))
        picks.append(j)
        avail[j] = False
    return picks, gains, evals


def stochastic_samples(m: int, k: int, epsilon: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic greedy's samples for ``k`` steps over ``m`` candidates, drawn up front.

    Step t samples ceil((m/k)·ln(1/ε)) of the m − t candidates left, without replacement, as sorted ranks among
    them (all of them when no more are left). ``rng.choice`` draws the same numbers for a population of a given size
    whatever its values, so this is the same sample as drawing ``rng.choice(available_ids, …)`` at every step.

    Returns:
        ``(positions int32 (k, s), counts int32 (k,))`` for the blocks' ``stochastic_greedy``.
    """
    sample = max(1, math.ceil((m / k) * math.log(1.0 / epsilon)))
    width = min(sample, m)
    positions = np.zeros((k, width), dtype=np.int32)
    counts = np.zeros(k, dtype=np.int32)
    for t in range(k):
        left = m - t
        if left > sample:
            positions[t] = np.sort(rng.choice(left, size=sample, replace=False))
            counts[t] = sample
        else:
            positions[t, :left] = np.arange(left)
            counts[t] = left
    return positions, counts


def greedy(
    block: _Block, k: int, optimizer: str = "lazy", epsilon: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Run a greedy variant on a facility-location block (of either backend) for ``k`` picks.

    Args:
        block: a ``FacilityLocationBlock`` of :mod:`nessa.accel.selection_ops` or its numpy reference.
        k: number of picks, in [1, block.m].
        optimizer: ``"naive"``, ``"lazy"`` (same order as naive) or ``"stochastic"``.
        epsilon: stochastic greedy's ε in (0, 1).
        seed: stochastic greedy's sampling seed.

    Returns:
        ``(picks int64, gains float64, gain evaluations)``.
    """
    picks: Any
    gains: Any
    if optimizer == "naive":
        picks, gains, evals = _naive(block, k)
    elif optimizer == "lazy":
        picks, gains, evals = block.lazy_greedy(k)
    elif optimizer == "stochastic":
        positions, counts = stochastic_samples(block.m, k, epsilon, np.random.default_rng(seed))
        picks, gains, evals = block.stochastic_greedy(positions, counts)
    else:
        raise InvalidArgumentError(f"unknown optimizer {optimizer!r}; use one of {list(OPTIMIZERS)}")
    return np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64), evals


# ------------------------------------------------------------------------------------------------ maximize
def _cluster_sizes(assignment: np.ndarray, best: np.ndarray, k: int, rule: str) -> np.ndarray:
    if rule == "submodlib":
        counted = assignment[(best > 0) & (assignment >= 0)]
        sizes = np.bincount(counted, minlength=k).astype(np.float64)
        sizes[sizes == 0] = 1.0
        return sizes
    return np.bincount(assignment[assignment >= 0], minlength=k).astype(np.float64)


def _validate(
    features: Any,
    k: Any,
    similarity: str,
    optimizer: str,
    epsilon: Any,
    seed: Any,
    block_size: Any,
    weight_rule: str,
    threshold: Any,
) -> np.ndarray:
    x = check_features("features", features)
    n = x.shape[0]
    if not is_int(k) or not 1 <= int(k) <= n:
        raise InvalidArgumentError(f"k={k!r} must be an int in [1, {n}] (the number of feature rows)")
    check_kind(similarity)
    if optimizer not in OPTIMIZERS:
        raise InvalidArgumentError(f"unknown optimizer {optimizer!r}; use one of {list(OPTIMIZERS)}")
    if not is_real(epsilon) or not 0.0 < float(epsilon) < 1.0:
        raise InvalidArgumentError(f"epsilon={epsilon!r} must be in (0, 1) (stochastic greedy's accuracy)")
    if not is_int(seed):
        raise InvalidArgumentError(f"seed must be an int; got {seed!r}")
    if not is_int(block_size) or int(block_size) < 2:
        raise InvalidArgumentError(f"block_size={block_size!r} must be an int >= 2 (elements per dense block)")
    if weight_rule not in WEIGHT_RULES:
        raise InvalidArgumentError(f"unknown weight_rule {weight_rule!r}; use one of {list(WEIGHT_RULES)}")
    if not is_real(threshold) or not math.isfinite(threshold):
        raise InvalidArgumentError(f"threshold must be a finite number; got {threshold!r}")
    return x


def maximize(
    features: np.ndarray,
    k: int,
    *,
    similarity: str = "max_minus_dist",
    similarity_param: float | None = None,
    threshold: float = 0.0,
    optimizer: str = "lazy",
    epsilon: float = 0.1,
    seed: int = 0,
    backend: str = "opencl",
    block_size: int = 10_000,
    weight_rule: str = "craig",
) -> FacilityLocationResult:
    """Greedy facility-location selection of ``k`` rows of ``features`` (see the module docstring).

    Args:
        features: (n, d) per-element features (e.g. gradients ``p − y`` or embeddings); finite.
        k: number of elements to select, in [1, n].
        similarity: ``"max_minus_dist"`` (CRAIG), ``"exp"`` (submodlib/CREST) or ``"cosine"``.
        similarity_param: M for ``max_minus_dist`` (default: block max; under GreeDi 2·max‖x − x̄‖), D for ``exp``
            (default: the feature dimension); ignored by ``cosine``.
        threshold: similarities below it become 0.
        optimizer: ``"naive"``, ``"lazy"`` (exactly the naive order) or ``"stochastic"``.
        epsilon: stochastic greedy's ε in (0, 1): ceil((n/k)·ln(1/ε)) candidates are sampled per step.
        seed: seed for stochastic greedy's samples and GreeDi's random parts.
        backend: ``"opencl"`` (kernels) or ``"numpy"`` (the reference).
        block_size: the largest ground set held as one dense block; above it GreeDi runs.
        weight_rule: ``"craig"`` or ``"submodlib"`` cluster sizes.

    Returns:
        A :class:`FacilityLocationResult`.

    Raises:
        InvalidArgumentError: bad features (shape, NaN/Inf), ``k`` outside [1, n], or an unknown option value.
    """
    from nessa.accel.selection_ops import get_ops

    x = _validate(features, k, similarity, optimizer, epsilon, seed, block_size, weight_rule, threshold)
    k = int(k)
    ops = get_ops(backend)
    try:
        return _maximize(x, k, similarity, similarity_param, float(threshold), optimizer, float(epsilon), int(seed),
                         ops, int(block_size), weight_rule)  # fmt: skip
    finally:
        ops.release_scratch()


def _maximize(
    x: np.ndarray,
    k: int,
    similarity: str,
    similarity_param: float | None,
    threshold: float,
    optimizer: str,
    epsilon: float,
    seed: int,
    ops: Any,
    block_size: int,
    weight_rule: str,
) -> FacilityLocationResult:
    n = x.shape[0]
    param = resolve_param(similarity, similarity_param, x.shape[1])
    if n <= block_size:
        block = ops.FacilityLocationBlock(x, None, similarity, param, threshold)
        try:
            picks, gains, evals = greedy(block, k, optimizer, epsilon, seed)
            best = block.best
            assignment = block.assignment
            objective = block.objective()
            used = block.param
        finally:
            block.close()
        return FacilityLocationResult(
            indices=picks,
            cluster_sizes=_cluster_sizes(assignment, best, k, weight_rule),
            objective=objective,
            assignment=assignment,
            gains=gains,
            stats={"mode": "dense", "parts": 1, "max_block": n, "gain_evaluations": evals, "param": used},
        )
    return _greedi(x, k, similarity, param, threshold, optimizer, epsilon, seed, ops, block_size, weight_rule)


def _nearest_in_chunks(
    ops: Any, x: np.ndarray, chosen: np.ndarray, kind: str, param: float | None, threshold: float, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``ops.nearest_selected`` over row chunks of ``x`` of at most block_size² / k rows each.

    The numpy reference materializes a rows × k similarity block; chunking keeps it within one dense block's
    memory (block_size²) however large n is. Rows are independent and ``param`` is fixed by the caller (M under
    GreeDi, D for ``exp``), so the result is the same as one call.
    """
    n, k = x.shape[0], chosen.shape[0]
    rows = max(1, (block_size * block_size) // max(k, 1))
    if rows >= n:
        pos, best = ops.nearest_selected(x, chosen, kind, param, threshold)
        return np.asarray(pos, dtype=np.int64), np.asarray(best, dtype=np.float32)
    assignment = np.empty(n, dtype=np.int64)
    best_all = np.empty(n, dtype=np.float32)
    for start in range(0, n, rows):
        pos, best = ops.nearest_selected(x[start : start + rows], chosen, kind, param, threshold)
        assignment[start : start + rows] = pos
        best_all[start : start + rows] = best
    return assignment, best_all


def _greedi(
    x: np.ndarray,
    k: int,
    kind: str,
    param: float | None,
    threshold: float,
    optimizer: str,
    epsilon: float,
    seed: int,
    ops: Any,
    block_size: int,
    weight_rule: str,
) -> FacilityLocationResult:
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    num_parts = -(-n // block_size)
    parts = [np.sort(p) for p in np.array_split(rng.permutation(n), num_parts)]
    if kind == "max_minus_dist" and param is None:
        x64 = x.astype(np.float64)
        radius = float(np.sqrt(((x64 - x64.mean(axis=0)) ** 2).sum(axis=1).max()))
        param = float(np.nextafter(np.float32(2.0 * radius), np.float32(np.inf)))
    evals = 0
    max_block = max(p.size for p in parts)
    stage1 = [min(k, p.size) for p in parts]
    if sum(stage1) <= block_size:
        mode = "greedi"
        chosen: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        for i, (part, kp) in enumerate(zip(parts, stage1, strict=True)):
            block = ops.FacilityLocationBlock(x[part], None, kind, param, threshold)
            try:
                picks, _, ev = greedy(block, kp, optimizer, epsilon, seed + 1 + i)
                counts.append(np.bincount(block.assignment, minlength=kp).astype(np.float32))
            finally:
                block.close()
            evals += ev
            chosen.append(part[picks])
        union = np.concatenate(chosen)
        weights = np.concatenate(counts)
        max_block = max(max_block, union.size)
        block = ops.FacilityLocationBlock(x[union], None, kind, param, threshold, weights)
        try:
            picks, gains, ev = greedy(block, k, optimizer, epsilon, seed)
        finally:
            block.close()
        evals += ev
        indices = union[picks]
    else:
        mode = "partitioned"
        shares = largest_remainder(k, [p.size for p in parts])
        orders: list[np.ndarray] = []
        all_gains: list[np.ndarray] = []
        for i, (part, kp) in enumerate(zip(parts, shares, strict=True)):
            if kp == 0:
                continue
            block = ops.FacilityLocationBlock(x[part], None, kind, param, threshold)
            try:
                picks, g, ev = greedy(block, kp, optimizer, epsilon, seed + 1 + i)
            finally:
                block.close()
            evals += ev
            orders.append(part[picks])
            all_gains.append(g)
        indices = interleave(orders)
        flat_gain = dict(zip(np.concatenate(orders).tolist(), np.concatenate(all_gains).tolist(), strict=True))
        gains = np.asarray([flat_gain[i] for i in indices.tolist()], dtype=np.float64)
    assignment, best = _nearest_in_chunks(ops, x, x[indices], kind, param, threshold, block_size)
    objective = float(np.maximum(best.astype(np.float64), 0.0).sum())
    return FacilityLocationResult(
        indices=np.asarray(indices, dtype=np.int64),
        cluster_sizes=_cluster_sizes(assignment, best, k, weight_rule),
        objective=objective,
        assignment=np.asarray(assignment, dtype=np.int64),
        gains=gains,
        stats={"mode": mode, "parts": num_parts, "max_block": max_block, "gain_evaluations": evals, "param": param},
    )
