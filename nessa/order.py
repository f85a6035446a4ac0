"""The order in which a selection's samples are delivered: a pure function of the selection, a seed and a split.

The storage daemon streams in this order and the map-style :class:`nessa.data.SelectionSampler` yields the same
order, so both paths agree. The order never depends on timing, worker counts or how a stream was resumed:

1. *shuffle*: with a seed, the selection is permuted by ``numpy.random.default_rng(seed).permutation``;
   without one, it keeps the selection's order;
2. *ranks*: position ``p`` of that order goes to rank ``p % world_size``;
3. *workers*: inside a rank, after ``skip`` already-consumed samples, consecutive blocks of ``block_size``
   samples go to data-loader workers in turn (block ``b`` to worker ``b % num_workers``). A loader that takes one
   batch of ``block_size`` from each worker in turn therefore sees the rank's order unchanged.

With the default ``remainder="keep"`` each sample of the selection lands in exactly one (rank, worker) part and
ranks differ in size by at most one sample. Under DDP every rank must run the same number of steps (a rank with
one batch more waits forever in the all-reduce), so a split can be made even (step 2 then applies to the
extended or shortened order):

* ``remainder="pad"``: like ``torch.utils.data.DistributedSampler``, the order is extended to a multiple of
  ``world_size`` by repeating its first samples (cyclically if the selection is smaller than the pad), so every
  rank gets ``ceil(n / world_size)``; up to ``world_size - 1`` samples are delivered twice per epoch;
* ``remainder="drop"``: the last ``n % world_size`` samples of the order are left out (a different few every
  shuffled epoch), so every rank gets ``n // world_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nessa.errors import InvalidArgumentError, OutOfRangeError

__all__ = [
    "REMAINDERS",
    "Partition",
    "epoch_seed",
    "rank_positions",
    "rank_share",
    "shuffled_order",
    "stream_positions",
]

REMAINDERS = ("keep", "pad", "drop")


@dataclass(frozen=True)
class Partition:
    """Which part of a selection one consumer (a rank's data-loader worker) receives.

    Attributes:
        world_size: number of trainer ranks (>= 1).
        rank: this rank, in ``[0, world_size)``.
        num_workers: data-loader workers of this rank (>= 1).
        worker: this worker, in ``[0, num_workers)``.
        block_size: consecutive samples a worker takes in turn (the loader's batch size; >= 1).
        skip: samples of this rank already consumed; they are left out and worker blocks restart after them.
        worker_skip: samples of this worker's part (after ``skip``) already consumed: a worker resumed on its own
            state (torchdata's ``StatefulDataLoader`` restores each worker separately).
        remainder: ``keep``, ``pad`` or ``drop``: how an uneven split over ranks is handled (see the module).
    """

    world_size: int = 1
    rank: int = 0
    num_workers: int = 1
    worker: int = 0
    block_size: int = 1
    skip: int = 0
    worker_skip: int = 0
    remainder: str = "keep"

    def __post_init__(self) -> None:
        if self.remainder not in REMAINDERS:
            raise InvalidArgumentError(
                f"partition remainder {self.remainder!r} is not one of {', '.join(REMAINDERS)}; pick one of them"
            )
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise InvalidArgumentError(
                f"partition rank {self.rank} is not in [0, world_size={self.world_size}); "
                "give world_size >= 1 and 0 <= rank < world_size"
            )
        if self.num_workers < 1 or not 0 <= self.worker < self.num_workers:
            raise InvalidArgumentError(
                f"partition worker {self.worker} is not in [0, num_workers={self.num_workers}); "
                "give num_workers >= 1 and 0 <= worker < num_workers"
            )
        if self.block_size < 1:
            raise InvalidArgumentError(f"partition block_size must be >= 1; got {self.block_size}")
        if self.skip < 0 or self.worker_skip < 0:
            raise InvalidArgumentError(f"partition skips must be >= 0; got {self.skip}, {self.worker_skip}")


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffle seed of one epoch: a pure function of ``(seed, epoch)``, the same in every rank and worker."""
    if seed < 0 or epoch < 0:
        raise InvalidArgumentError(f"seed and epoch must be >= 0; got seed={seed}, epoch={epoch}")
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def shuffled_order(n: int, shuffle_seed: int | None) -> np.ndarray:
    """Positions ``0..n-1`` in delivery order: permuted by the seed, or unchanged without one."""
    if shuffle_seed is None:
        return np.arange(n, dtype=np.int64)
    if shuffle_seed < 0:
        raise InvalidArgumentError(f"shuffle seed must be >= 0; got {shuffle_seed}")
    return np.random.default_rng(shuffle_seed).permutation(n).astype(np.int64, copy=False)


def _even_order(n: int, shuffle_seed: int | None, world_size: int, remainder: str) -> np.ndarray:
    order = shuffled_order(n, shuffle_seed)
    extra = n % world_size
    if n == 0 or extra == 0 or remainder == "keep":
        return order
    if remainder == "pad":
        return np.resize(order, n + world_size - extra)  # repeats the first samples, cyclically if needed
    return order[: n - extra]


def rank_share(n: int, world_size: int = 1, rank: int = 0, remainder: str = "keep") -> int:
    """Samples one rank receives per epoch from a selection of ``n``."""
    Partition(world_size=world_size, rank=rank, remainder=remainder)
    if n == 0:
        return 0
    if remainder == "pad":
        return -(-n // world_size)
    if remainder == "drop":
        return n // world_size
    return len(range(rank, n, world_size))


def rank_positions(
    n: int, shuffle_seed: int | None, world_size: int = 1, rank: int = 0, remainder: str = "keep"
) -> np.ndarray:
    """Positions (into the selection) that one rank receives, in its order."""
    Partition(world_size=world_size, rank=rank, remainder=remainder)
    return _even_order(n, shuffle_seed, world_size, remainder)[rank::world_size]


def stream_positions(n: int, shuffle_seed: int | None, partition: Partition | None = None) -> np.ndarray:
    """Positions (into the selection) that one part receives, in delivery order.

    Args:
        n: number of samples in the selection.
        shuffle_seed: seed of the permutation, or ``None`` to keep the selection's order.
        partition: the part; ``None`` is the whole selection.

    Returns:
        int64 positions into the selection's indices.

    Raises:
        OutOfRangeError: ``partition.skip`` is larger than the rank's share, or ``worker_skip`` than the worker's.
    """
    part = partition or Partition()
    ranked = _even_order(n, shuffle_seed, part.world_size, part.remainder)[part.rank :: part.world_size]
    if part.skip > len(ranked):
        raise OutOfRangeError(
            f"cannot skip {part.skip} samples: rank {part.rank} of {part.world_size} has only {len(ranked)} "
            "in this selection; reset the consumed count (new epoch) or resume with the state of this selection"
        )
    ranked = ranked[part.skip :]
    if part.num_workers > 1:
        block = np.arange(len(ranked), dtype=np.int64) // part.block_size
        ranked = ranked[block % part.num_workers == part.worker]
    if part.worker_skip > len(ranked):
        raise OutOfRangeError(
            f"cannot skip {part.worker_skip} samples: worker {part.worker} of {part.num_workers} has only "
            f"{len(ranked)}; resume each worker with its own state of this selection and epoch"
        )
    return ranked[part.worker_skip :]
