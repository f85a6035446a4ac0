"""Candidate pools: random class-balanced partitions of the candidates.

NeSSA's ``pool=partitions`` option (and CREST's random subsets) selects "one mini-batch coreset per partition"
instead of one coreset per class over all data. A partition here is *class-balanced*: the candidates of each class
are shuffled and dealt round-robin over the partitions, continuing where the previous class stopped. So every
partition holds ⌊N/P⌋ or ⌈N/P⌉ candidates in all, and ⌊n_c/P⌋ or ⌈n_c/P⌉ of each class c. The result is a pure
function of (labels, P, seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nessa.accel.reference.selection import is_int
from nessa.errors import InvalidArgumentError

__all__ = ["class_balanced_partitions"]


def class_balanced_partitions(
    labels: np.ndarray | Sequence[int],
    num_partitions: int | None = None,
    partition_size: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split the candidate positions into random, class-balanced, disjoint partitions that cover them all.

    Give exactly one of ``num_partitions`` and ``partition_size``.

    Args:
        labels: class label per candidate, shape (N,).
        num_partitions: P, in [1, N].
        partition_size: the largest partition size wanted (>= 1); P = ceil(N / partition_size).
        seed: seed of the shuffle.

    Returns:
        P int64 arrays of positions into ``labels``, each sorted ascending.

    Raises:
        InvalidArgumentError: both or neither size given, a size out of range, or bad labels.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidArgumentError(f"labels must be a non-empty 1-D array (one per candidate); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgumentError(f"labels must be integers; got dtype {arr.dtype}")
    n = int(arr.size)
    if (num_partitions is None) == (partition_size is None):
        raise InvalidArgumentError("give exactly one of num_partitions and partition_size")
    if num_partitions is not None:
        if not is_int(num_partitions):
            raise InvalidArgumentError(f"num_partitions must be an int in [1, {n}]; got {num_partitions!r}")
        p = int(num_partitions)
        if not 1 <= p <= n:
            raise InvalidArgumentError(f"num_partitions={p} is outside [1, {n}] (the number of candidates)")
    else:
        if partition_size is None or not is_int(partition_size) or int(partition_size) < 1:
            raise InvalidArgumentError(f"partition_size must be an int >= 1; got {partition_size!r}")
        p = -(-n // int(partition_size))
    rng = np.random.default_rng(seed)
    order = np.argsort(arr, kind="stable")
    bounds = np.flatnonzero(np.diff(arr[order])) + 1
    dealt = np.concatenate([rng.permutation(chunk) for chunk in np.split(order, bounds)])
    owner = np.arange(n) % p
    return [np.sort(dealt[owner == i]).astype(np.int64) for i in range(p)]
