"""Seeded k-means (k-means++ seeding, then Lloyd iterations) on the selection ops' ``kmeans_assign``.

Used by :mod:`nessa.selection.sas` to form latent classes when no class ids are given (SAS paper recipe (c):
k-means with K = number of classes, Euclidean, at most 1000 iterations, on the proxy embeddings).

The distance work (every point against every centre) runs in the ``kmeans_assign`` op of the chosen backend
(OpenCL by default, the numpy reference only when asked for); the centre update (a per-cluster mean) is an
O(n·d) reduction done on the host in float64.

* Seeding: k-means++ (Arthur & Vassilvitskii 2007): the first centre uniformly at random, each next one with
  probability proportional to the squared distance to the nearest centre so far (D² sampling), from a
  ``numpy.random.Generator`` seeded with ``seed``. If every point already coincides with a centre, the next
  centre is a uniformly random point not yet chosen.
* Lloyd: assign, stop if no label changed, else move each centre to its cluster's mean; stop also when the total
  squared centre shift is at most ``tol`` times the mean per-feature variance of ``x`` (scikit-learn's rule) or
  after ``max_iter`` iterations. An empty cluster is re-seeded at the point farthest from its centre
  (deterministic), so every cluster ends non-empty when there are at least ``k`` distinct points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nessa.errors import InvalidArgumentError

__all__ = ["KMeansResult", "kmeans"]


@dataclass(frozen=True)
class KMeansResult:
    """The outcome of :func:`kmeans`.

    Attributes:
        labels: int64 (n,): the cluster of each point (index into ``centers``).
        centers: float32 (k, d): cluster centres after the last update (each cluster's mean, up to ``tol``).
        inertia: sum of squared distances of the points to their centres.
        iterations: Lloyd iterations run.
        converged: whether the labels (or centres, within ``tol``) stopped changing before ``max_iter``.
    """

    labels: np.ndarray
    centers: np.ndarray
    inertia: float
    iterations: int
    converged: bool


def _validate(x: np.ndarray, k: int, max_iter: int, tol: float) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"kmeans needs a numeric array (n, d) of points ({exc})") from exc
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidArgumentError(f"kmeans needs a non-empty 2-D array (n, d) of points; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidArgumentError("kmeans points hold NaN/Inf values; clean the embeddings first")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= arr.shape[0]:
        raise InvalidArgumentError(f"kmeans k must be an integer in [1, n={arr.shape[0]}]; got {k!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise InvalidArgumentError(f"kmeans max_iter must be an integer >= 1; got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not np.isfinite(tol) or tol < 0:
        raise InvalidArgumentError(f"kmeans tol must be a finite number >= 0; got {tol!r}")
    return np.ascontiguousarray(arr)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, ops: Any) -> np.ndarray:
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    _, nearest = ops.kmeans_assign(x, x[chosen[0]][None, :])
    nearest = np.maximum(np.asarray(nearest, dtype=np.float64), 0.0)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total > 0.0:
            # D² sampling by inverse CDF: robust to float round-off in the probabilities.
            cdf = np.cumsum(nearest)
            pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            pick = min(pick, n - 1)
            if nearest[pick] <= 0.0:  # round-off landed on a zero-mass point: take the next with mass
                pick = int(np.flatnonzero(nearest > 0.0)[0])
        else:
            free = np.setdiff1d(np.arange(n), np.asarray(chosen), assume_unique=False)
            pick = int(free[rng.integers(len(free))]) if len(free) else int(rng.integers(n))
        chosen.append(pick)
        _, dist = ops.kmeans_assign(x, x[pick][None, :])
        np.minimum(nearest, np.maximum(np.asarray(dist, dtype=np.float64), 0.0), out=nearest)
    return x[np.asarray(chosen)].astype(np.float32, copy=True)


def _cluster_means(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    present = np.flatnonzero(counts)
    starts = np.searchsorted(sorted_labels, present, side="left")
    sums[present] = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    return sums, counts


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    backend: str = "opencl",
) -> KMeansResult:
    """Cluster ``x`` into ``k`` groups: k-means++ seeding, then Lloyd iterations.

    Args:
        x: float32 points, shape (n, d), finite.
        k: number of clusters, in [1, n].
        seed: seed of the k-means++ sampling; the result is a pure function of (x, k, seed, options, backend).
        max_iter: most Lloyd iterations (SAS's recipe uses up to 1000).
        tol: relative centre-shift tolerance (see the module docstring); 0 runs until labels stop changing.
        backend: ``"opencl"`` (default) or ``"numpy"``; the backend of the ``kmeans_assign`` op.

    Returns:
        The labels, centres, inertia and iteration count.

    Raises:
        InvalidArgumentError: bad points, ``k`` or options, or an unknown backend.
    """
    from nessa.accel.selection_ops import get_ops

    points = _validate(x, k, max_iter, tol)
    ops = get_ops(backend)
    rng = np.random.default_rng(seed)
    k = int(k)
    centers = _kmeans_plus_plus(points, k, rng, ops)
    threshold = float(tol) * float(np.mean(np.var(points.astype(np.float64), axis=0)))
    previous: np.ndarray | None = None
    converged = False
    iterations = 0
    labels = np.zeros(points.shape[0], dtype=np.int64)
    sq = np.zeros(points.shape[0], dtype=np.float64)
    for iterations in range(1, int(max_iter) + 1):  # noqa: B007 - the count is reported
        raw_labels, raw_sq = ops.kmeans_assign(points, centers)
        labels = np.asarray(raw_labels, dtype=np.int64)
        sq = np.maximum(np.asarray(raw_sq, dtype=np.float64), 0.0)
        if previous is not None and np.array_equal(labels, previous):
            converged = True
            break
        previous = labels
        sums, counts = _cluster_means(points, labels, k)
        new_centers = centers.astype(np.float64, copy=True)
        filled = counts > 0
        new_centers[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if len(empty):
            # Re-seed each empty cluster at the point farthest from its centre (taken once each).
            far = np.argsort(-sq, kind="stable")[: len(empty)]
            new_centers[empty] = points[far]
        shift = float(np.sum((new_centers - centers) ** 2))
        centers = new_centers.astype(np.float32)
        if len(empty) == 0 and shift <= threshold:
            raw_labels, raw_sq = ops.kmeans_assign(points, centers)
            labels = np.asarray(raw_labels, dtype=np.int64)
            sq = np.maximum(np.asarray(raw_sq, dtype=np.float64), 0.0)
            converged = True
            break
    return KMeansResult(
        labels=labels, centers=centers, inertia=float(sq.sum()), iterations=iterations, converged=converged
    )
