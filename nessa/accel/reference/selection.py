"""Numpy reference of the selection ops: distances, similarities, facility-location gains, assignment, top-k.

These are the oracle the OpenCL kernels (:mod:`nessa.accel.selection_ops`, same names and signatures) are tested
against, and the ``backend="numpy"`` path (chosen only when asked for). Distances are computed in float64 and
returned as float32.

Similarity kinds (``kind``) for facility location, all followed by "values below ``threshold`` become 0":

* ``"max_minus_dist"`` (CRAIG): s = M − ‖a − b‖, M = ``param`` if given, else the largest distance in the block
  being computed (CRAIG takes the max over the class block).
* ``"exp"`` (submodlib, used by CREST and the augmentation coresets): s = exp(−‖a − b‖ / D), D = ``param``,
  default the feature dimension.
* ``"cosine"``: s = cos(a, b); a zero vector has cosine 0 with everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from nessa.errors import FailedPreconditionError, InvalidArgumentError

__all__ = [
    "SIMILARITY_KINDS",
    "FacilityLocationBlock",
    "check_features",
    "check_kind",
    "check_pair",
    "check_stochastic_samples",
    "cosine_similarity",
    "cross_covariance",
    "group_topk",
    "is_int",
    "is_real",
    "kmeans_assign",
    "nearest_selected",
    "normalize_topk_budget",
    "pairwise_sq_dists",
    "release_scratch",
    "resolve_param",
    "similarity",
]

#: Similarity kinds understood by :func:`similarity` and :class:`FacilityLocationBlock`.
SIMILARITY_KINDS = ("max_minus_dist", "exp", "cosine")


# ----------------------------------------------------------------------------------------------- validation
def is_int(value: Any) -> bool:
    """True for a Python or numpy integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """True for a Python or numpy integer or float (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_features(name: str, x: Any, *, allow_empty: bool = False) -> np.ndarray:
    """Validate a feature matrix: 2-D, numeric, finite, non-empty; return it as C-contiguous float32.

    Raises:
        InvalidArgumentError: what is wrong with ``x`` and how to fix it.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InvalidArgumentError(f"{name} must be a 2-D (samples, features) array; got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidArgumentError(f"{name} must be numeric; got dtype {arr.dtype}")
    if not allow_empty and (arr.shape[0] == 0 or arr.shape[1] == 0):
        raise InvalidArgumentError(f"{name} is empty (shape {arr.shape}); give at least one row and one feature")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise InvalidArgumentError(
            f"{name} holds {bad} NaN/Inf value(s) (after conversion to float32); fix or drop those rows first"
        )
    return out


def check_pair(a: Any, b: Any, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    """Validate two feature matrices with the same number of features."""
    x = check_features(names[0], a)
    y = check_features(names[1], b)
    if x.shape[1] != y.shape[1]:
        raise InvalidArgumentError(
            f"feature dimensions differ: {names[0]} has {x.shape[1]}, {names[1]} has {y.shape[1]}; "
            f"both need the same number of columns"
        )
    return x, y


def check_kind(kind: str) -> str:
    """Validate a similarity kind name."""
    if kind not in SIMILARITY_KINDS:
        raise InvalidArgumentError(f"unknown similarity kind {kind!r}; use one of {list(SIMILARITY_KINDS)}")
    return kind


def _check_real(name: str, value: Any) -> float:
    if not is_real(value) or not math.isfinite(float(value)):
        raise InvalidArgumentError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def resolve_param(kind: str, param: float | None, dim: int) -> float | None:
    """The similarity parameter actually used: ``exp`` → D (default the feature dim), else ``param`` as given.

    For ``max_minus_dist`` a ``None`` stays ``None`` (M is then the block's max distance). ``cosine`` ignores it.

    Raises:
        InvalidArgumentError: a non-finite parameter, D <= 0, or M < 0.
    """
    check_kind(kind)
    if kind == "exp":
        d = float(dim) if param is None else _check_real("exp similarity scale D (similarity_param)", param)
        if d <= 0:
            raise InvalidArgumentError(f"exp similarity scale D must be > 0; got {d}")
        return d
    if kind == "max_minus_dist" and param is not None:
        m = _check_real("max_minus_dist offset M (similarity_param)", param)
        if m < 0:
            raise InvalidArgumentError(f"max_minus_dist offset M must be >= 0 (at least the max distance); got {m}")
        return m
    return None


# ----------------------------------------------------------------------------------------------- dense ops
def _sq_dists64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64)
    center = 0.5 * (x64.mean(axis=0) + y64.mean(axis=0))  # centering keeps ‖a‖²+‖b‖²−2ab well conditioned
    x64 -= center
    y64 -= center
    out = (x64 * x64).sum(axis=1)[:, None] + (y64 * y64).sum(axis=1)[None, :] - 2.0 * (x64 @ y64.T)
    np.maximum(out, 0.0, out=out)
    return out


def _unit_rows64(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    norms = np.sqrt((x64 * x64).sum(axis=1))
    return np.divide(x64, norms[:, None], out=np.zeros_like(x64), where=norms[:, None] > 0)


def pack_panels(x: np.ndarray, w: int, center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Oracle of the ``sel_pack_panels`` kernel: the rows of ``x`` (n, d) minus ``center``, cut into panels of ``w``.

    Returns:
        (panels, norms): float32 (ceil(n / w), d, w) with ``panels[p, k, c] = x[p * w + c, k] - center[k]`` (a float32
        subtraction; 0 past row n), and float32 (ceil(n / w) * w,) squared norms of those rows (0 for the padding).
    """
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    n_pad = -(-n // w) * w
    padded = np.zeros((n_pad, d), dtype=np.float32)
    padded[:n] = x if center is None else x - np.asarray(center, dtype=np.float32)[None, :]
    norms = np.einsum("ij,ij->i", padded.astype(np.float64), padded.astype(np.float64)).astype(np.float32)
    return np.ascontiguousarray(padded.reshape(n_pad // w, w, d).transpose(0, 2, 1)), norms


def pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` (m, d) and ``b`` (n, d): float32 (m, n)."""
    x, y = check_pair(a, b)
    return _sq_dists64(x, y).astype(np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities between the rows of ``a`` (m, d) and ``b`` (n, d): float32 (m, n); zero rows give 0."""
    x, y = check_pair(a, b)
    return np.clip(_unit_rows64(x) @ _unit_rows64(y).T, -1.0, 1.0).astype(np.float32)


def _raw_similarity64(x: np.ndarray, y: np.ndarray, kind: str, param: float | None) -> tuple[np.ndarray, float | None]:
    """Similarity before thresholding (float64) and the resolved parameter (M for max_minus_dist)."""
    if kind == "cosine":
        return np.clip(_unit_rows64(x) @ _unit_rows64(y).T, -1.0, 1.0), None
    dist = np.sqrt(_sq_dists64(x, y))
    if kind == "exp":
        assert param is not None
        return np.exp(-dist / param), param
    m = float(dist.max()) if param is None else param
    # M is rounded to float32 as the kernels pass it; the subtraction is then exact-ish in float64.
    m = float(np.float32(m))
    return m - dist, m


def similarity(
    a: np.ndarray, b: np.ndarray, kind: str = "max_minus_dist", param: float | None = None, threshold: float = 0.0
) -> np.ndarray:
    """Similarity matrix between the rows of ``a`` (m, d) and ``b`` (n, d) (see the module docstring for kinds).

    Args:
        a: (m, d) features.
        b: (n, d) features.
        kind: ``"max_minus_dist"``, ``"exp"`` or ``"cosine"``.
        param: M for ``max_minus_dist`` (default the block's max distance), D for ``exp`` (default d).
        threshold: similarities below it become 0.

    Returns:
        float32 (m, n).
    """
    x, y = check_pair(a, b)
    check_kind(kind)
    thr = _check_real("threshold", threshold)
    p = resolve_param(kind, param, x.shape[1])
    s, _ = _raw_similarity64(x, y, kind, p)
    s = s.astype(np.float32)
    s[s < np.float32(thr)] = 0.0
    return s


def nearest_selected(
    x: np.ndarray,
    selected: np.ndarray,
    kind: str = "max_minus_dist",
    param: float | None = None,
    threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x`` the most similar row of ``selected`` (ties: the lowest position).

    Args:
        x: (n, d) features of the ground elements.
        selected: (k, d) features of the selected elements.
        kind: similarity kind, as in :func:`similarity`.
        param: as in :func:`similarity` (M defaults to the max distance of this n×k block).
        threshold: similarities below it become 0 (before the argmax).

    Returns:
        ``(positions, best)``: int64 (n,) positions into ``selected`` and float32 (n,) the best similarities.
    """
    s = similarity(x, selected, kind, param, threshold)
    pos = np.argmax(s, axis=1).astype(np.int64)
    return pos, s[np.arange(s.shape[0]), pos]


def kmeans_assign(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every row of ``x`` (ties: the lowest centre index).

    Returns:
        ``(labels, sq_dist)``: int64 (n,) centre indices and float32 (n,) squared distances to them.
    """
    x, c = check_pair(x, centers, ("x", "centers"))
    d = _sq_dists64(x, c).astype(np.float32)
    lab = np.argmin(d, axis=1).astype(np.int64)
    return lab, d[np.arange(d.shape[0]), lab]


def cross_covariance(a: np.ndarray, b: np.ndarray, centered: bool = False) -> np.ndarray:
    """Cross-products aᵀb (p, q) of ``a`` (n, p) and ``b`` (n, q), optionally of the column-centered data.

    This is a *sum* over the n rows (a scatter matrix), not divided by n, so batches can be accumulated; divide by
    n (or n − 1) for a covariance.

    Returns:
        float32 (p, q).
    """
    x = check_features("a", a)
    y = check_features("b", b)
    if x.shape[0] != y.shape[0]:
        raise InvalidArgumentError(
            f"a and b must have the same number of rows (samples); got {x.shape[0]} and {y.shape[0]}"
        )
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64)
    if centered:
        x64 -= x64.mean(axis=0)
        y64 -= y64.mean(axis=0)
    return (x64.T @ y64).astype(np.float32)


def normalize_topk_budget(
    scores: Any, groups: Any, k: int | Mapping[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate :func:`group_topk`'s inputs.

    Returns:
        ``(scores float32, group ids, dense group index per element (int32), take per dense group (int64))``;
        a group missing from a mapping takes 0; a take above the group's size takes the whole group.
    """
    s = np.asarray(scores)
    g = np.asarray(groups)
    if s.ndim != 1 or g.ndim != 1 or s.shape != g.shape:
        raise InvalidArgumentError(f"scores and groups must be 1-D of the same length; got {s.shape} and {g.shape}")
    if s.size == 0:
        raise InvalidArgumentError("scores are empty; give at least one element")
    if not np.issubdtype(g.dtype, np.integer):
        raise InvalidArgumentError(f"groups must be integers; got dtype {g.dtype}")
    s = np.ascontiguousarray(s, dtype=np.float32)
    if np.isnan(s).any():
        raise InvalidArgumentError(f"scores hold {int(np.isnan(s).sum())} NaN value(s); fix the scores first")
    ids, dense = np.unique(g, return_inverse=True)
    sizes = np.bincount(dense, minlength=ids.size)
    if isinstance(k, Mapping):
        take = np.zeros(ids.size, dtype=np.int64)
        known = {int(v): i for i, v in enumerate(ids.tolist())}
        for key, value in k.items():
            if not is_int(value) or int(value) < 0:
                raise InvalidArgumentError(f"top-k for group {key!r} must be an int >= 0; got {value!r}")
            if int(key) in known:
                take[known[int(key)]] = int(value)
            elif int(value) > 0:
                raise InvalidArgumentError(
                    f"top-k asks {value} from group {key!r}, which has no elements; groups present: {ids.tolist()[:20]}"
                )
    else:
        if not is_int(k) or int(k) < 0:
            raise InvalidArgumentError(f"k must be an int >= 0 or a mapping group → int; got {k!r}")
        take = np.full(ids.size, int(k), dtype=np.int64)
    take = np.minimum(take, sizes)
    return s, ids, dense.astype(np.int32), take


def group_topk(scores: np.ndarray, groups: np.ndarray, k: int | Mapping[int, int]) -> np.ndarray:
    """Indices of the ``k`` highest scores of every group.

    Args:
        scores: (n,) scores (NaN is an error; -0.0 equals 0.0).
        groups: (n,) integer group of each element.
        k: how many per group: one int for all, or a mapping group → int (missing groups take 0; more than a
            group holds takes the whole group).

    Returns:
        int64 indices ordered by group ascending, then score descending, ties by the lowest index.
    """
    s, _, dense, take = normalize_topk_budget(scores, groups, k)
    s = s + np.float32(0.0)
    idx = np.arange(s.size)
    order = np.lexsort((idx, -s.astype(np.float64), dense))
    g_sorted = dense[order]
    starts = np.searchsorted(g_sorted, np.arange(take.size))
    rank = np.arange(s.size) - starts[g_sorted]
    return order[rank < take[g_sorted]].astype(np.int64)


def release_scratch() -> None:
    """Nothing to free: numpy blocks own their memory (the OpenCL backend parks a reusable block buffer)."""


# ----------------------------------------------------------------------------------------------- FL block
class FacilityLocationBlock:
    """Facility location over a ground set, with a candidate set, its similarity block kept across greedy steps.

    F(S) = Σ_i w_i · max(0, max_{j∈S} s_ij) over the ground elements i (the max with 0 is CRAIG's auxiliary
    element). The (m, n) similarity block is computed once here (float64, stored float32); ``gains`` and ``add``
    reuse it. The coverage starts at −inf ("nothing selected").

    Args:
        ground: (n, d) features of the ground set.
        candidates: (m, d) features of the candidates (default: the ground set itself, m = n).
        kind: similarity kind (see the module docstring).
        param: M / D as in :func:`similarity`; ``max_minus_dist`` without M uses the block's max distance.
        threshold: similarities below it become 0.
        ground_weights: (n,) non-negative weights w_i (default 1).
    """

    backend = "numpy"

    def __init__(
        self,
        ground: np.ndarray,
        candidates: np.ndarray | None = None,
        kind: str = "max_minus_dist",
        param: float | None = None,
        threshold: float = 0.0,
        ground_weights: np.ndarray | None = None,
    ) -> None:
        x = check_features("ground features", ground)
        y = x if candidates is None else check_pair(x, candidates, ("ground features", "candidate features"))[1]
        check_kind(kind)
        self.kind = kind
        self.threshold = _check_real("threshold", threshold)
        p = resolve_param(kind, param, x.shape[1])
        raw, p = _raw_similarity64(y, x, kind, p)
        self.param: float | None = p
        s = raw.astype(np.float32)
        s[s < np.float32(self.threshold)] = 0.0
        self._s = s  # (m, n): row j = candidate j against every ground element
        self.m, self.n = s.shape
        self.weights = _check_weights(ground_weights, self.n)
        self._best = np.full(self.n, -np.inf, dtype=np.float32)
        self._assign = np.full(self.n, -1, dtype=np.int64)
        self.selected: list[int] = []

    @property
    def nbytes(self) -> int:
        """Bytes held by the similarity block and the per-element state."""
        return int(self._s.nbytes + self._best.nbytes + self._assign.nbytes)

    def _ids(self, candidate_ids: Any) -> np.ndarray:
        ids = np.asarray(candidate_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.m):
            raise InvalidArgumentError(f"candidate ids must be in [0, {self.m}); got {ids.min()}..{ids.max()}")
        return ids

    def gains(self, candidate_ids: Any) -> np.ndarray:
        """Marginal gains F(j | S) of the given candidates, float32 (len,)."""
        ids = self._ids(candidate_ids)
        cov = np.maximum(self._best, np.float32(0.0))
        diff = np.maximum(self._s[ids] - cov[None, :], np.float32(0.0))
        if self.weights is not None:
            diff *= self.weights[None, :]
        return diff.sum(axis=1, dtype=np.float32)

    def add(self, j: int, gain: float | None = None) -> float:
        """Add candidate ``j`` to S (coverage and nearest-selected update); return its gain (given or computed)."""
        jj = int(self._ids([j])[0])
        if jj in self.selected:
            raise FailedPreconditionError(f"candidate {jj} is already selected; pick each candidate once")
        g = float(self.gains([jj])[0]) if gain is None else float(gain)
        row = self._s[jj]
        better = row > self._best
        self._assign[better] = len(self.selected)
        self._best[better] = row[better]
        self.selected.append(jj)
        return g

    def lazy_greedy(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``k`` lazy-greedy picks among the unselected candidates (the reference of ``sel_fl_lazy``).

        Exactly the order of ``k`` naive greedy steps (argmax of :meth:`gains`, ties: the lowest id): stale gains are
        upper bounds (coverage only grows, every term shrinks), and a bound is accepted only when fresh. Stale bounds
        are re-evaluated in batches of 16, 32, … 256 largest.

        Returns:
            ``(picks int64 (k,), gains float32 (k,), gain evaluations)``; the picks are added to the block.
        """
        avail = np.ones(self.m, dtype=bool)
        avail[self.selected] = False
        ids = np.flatnonzero(avail)
        if not is_int(k) or not 0 <= int(k) <= ids.size:
            raise InvalidArgumentError(f"k={k!r} must be an int in [0, {ids.size}] (the candidates not yet selected)")
        bound = np.full(self.m, -np.inf)
        bound[ids] = self.gains(ids)  # exact now, upper bounds afterwards
        evals = ids.size
        fresh = np.zeros(self.m, dtype=np.int64)  # the step at which bound[j] was computed
        picks: list[int] = []
        gains: list[float] = []
        for step in range(int(k)):
            batch = 16
            while True:
                j = int(np.argmax(bound))  # the largest bound, lowest index on ties
                if fresh[j] == step:
                    gains.append(self.add(j, float(bound[j])))
                    picks.append(j)
                    bound[j] = -np.inf
                    break
                take = min(batch, self.m)
                top = np.argpartition(-bound, take - 1)[:take] if take < self.m else np.arange(self.m)
                top = top[np.isfinite(bound[top])]
                bound[top] = self.gains(top)
                evals += top.size
                fresh[top] = step
                batch = min(batch * 2, 256)
        return np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float32), evals

    def stochastic_greedy(self, positions: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Stochastic-greedy picks from drawn samples (the reference of ``sel_fl_stochastic``).

        Step t evaluates the unselected candidates whose ranks among the unselected ones (in increasing id order)
        are ``positions[t, :counts[t]]`` (strictly increasing) and picks the best (ties: the lowest id).

        Returns:
            ``(picks int64 (k,), gains float32 (k,), gain evaluations)``; the picks are added to the block.
        """
        avail = np.ones(self.m, dtype=bool)
        avail[self.selected] = False
        pos, cnt = check_stochastic_samples(positions, counts, int(avail.sum()))
        picks: list[int] = []
        gains: list[float] = []
        for t in range(cnt.size):
            ids = np.flatnonzero(avail)[pos[t, : cnt[t]]]
            g = self.gains(ids)
            b = int(np.argmax(g))
            j = int(ids[b])
            gains.append(self.add(j, float(g[b])))
            picks.append(j)
            avail[j] = False
        return np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float32), int(cnt.sum())

    @property
    def coverage(self) -> np.ndarray:
        """max(0, best similarity to S) per ground element, float32 (n,)."""
        return np.maximum(self._best, np.float32(0.0))

    @property
    def best(self) -> np.ndarray:
        """Best similarity to S per ground element (−inf before the first add), float32 (n,)."""
        return self._best.copy()

    @property
    def assignment(self) -> np.ndarray:
        """Position (in add order) of each ground element's most similar selected candidate (−1 before any add)."""
        return self._assign.copy()

    def objective(self) -> float:
        """F(S) = Σ_i w_i max(0, best_i), summed in float64."""
        cov = self.coverage.astype(np.float64)
        return float(cov.sum() if self.weights is None else (cov * self.weights).sum())

    def close(self) -> None:
        """Release the block's memory."""
        self._s = np.zeros((0, 0), dtype=np.float32)


def check_stochastic_samples(positions: Any, counts: Any, available: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate stochastic-greedy samples for a block with ``available`` unselected candidates.

    Args:
        positions: (k, s) ranks among the unselected candidates; row t's first ``counts[t]`` are strictly
            increasing and below ``available - t`` (the rest is ignored).
        counts: (k,) sample sizes, >= 1.
        available: the candidates not yet selected (m at the start).

    Returns:
        ``(positions int32 (k, s) contiguous, counts int32 (k,))``.

    Raises:
        InvalidArgumentError: shapes, sizes or ranks out of range, or more steps than candidates.
    """
    pos = np.ascontiguousarray(positions, dtype=np.int64)
    cnt = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
    k = cnt.size
    if pos.ndim != 2 or pos.shape[0] != k or (k and pos.shape[1] < 1):
        raise InvalidArgumentError(f"positions must be (k, s) with k = len(counts) = {k}; got {pos.shape}")
    if k > available:
        raise InvalidArgumentError(f"{k} steps exceed the {available} candidates not yet selected")
    if k:
        if cnt.min() < 1 or cnt.max() > pos.shape[1]:
            raise InvalidArgumentError(f"counts must be in [1, {pos.shape[1]}]")
        cols = np.arange(pos.shape[1])[None, :]
        used = cols < cnt[:, None]
        limit = (available - np.arange(k))[:, None]
        if (used & ((pos < 0) | (pos >= limit))).any():
            raise InvalidArgumentError("sample ranks must be in [0, candidates left at that step)")
        if (used[:, 1:] & (np.diff(pos, axis=1) <= 0)).any():
            raise InvalidArgumentError("sample ranks must be strictly increasing within a step")
    return pos.astype(np.int32), cnt.astype(np.int32)


def _check_weights(weights: Any, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.ascontiguousarray(weights, dtype=np.float32).reshape(-1)
    if w.shape != (n,):
        raise InvalidArgumentError(f"ground_weights must have one value per ground element ({n}); got {w.shape}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise InvalidArgumentError("ground_weights must be finite and >= 0")
    return w
