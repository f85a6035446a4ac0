"""PyTorch access to a selection: a streaming ``IterableDataset``, a counting loader, a map-style ``Sampler``.

:class:`SelectionDataset` streams a selection from the daemon, :class:`SelectionLoader` is a ``DataLoader`` that
counts what the trainer consumed, and :class:`SelectionSampler` serves users who keep their own map-style dataset.

Order and split follow :mod:`nessa.order`: the epoch's order is a pure function of ``(seed, epoch)`` (the same in
every rank and worker), positions go to ranks round-robin, and inside a rank consecutive blocks of ``batch_size``
samples go to data-loader workers in turn, so a ``DataLoader`` with the same ``batch_size`` yields the rank's
order unchanged whatever its ``num_workers``.

Equal steps under DDP: every rank gets the same number of samples, hence the same number of batches, so a DDP
loop never waits forever in an all-reduce a shorter rank will not join. By default (``remainder="pad"``) this is
torch's ``DistributedSampler`` rule: when the selection does not divide by ``world_size``, the epoch's order is
extended by repeating its first ``world_size - n % world_size`` samples, so each rank gets ``ceil(n /
world_size)``; those few samples are delivered twice in the epoch, everything else exactly once.
``remainder="drop"`` leaves the order's last ``n % world_size`` samples out instead (each rank ``n //
world_size``; a different few every shuffled epoch); ``remainder="keep"`` delivers each sample exactly once and
ranks differ by up to one sample (not for DDP). With one rank all three are the same.

Resuming: two ways, both exact. (1) :class:`SelectionLoader` (a ``DataLoader`` that counts the samples the loop
consumed) saves this rank's position; after ``load_state_dict`` the same epoch skips exactly those samples. Ranks
run in lockstep and have equal shares, so the state rank 0 saves (one checkpoint) restores every rank: each
skips the same count of *its own* samples (the state must have the same selection, seed, shuffle, world size and
remainder; its ``rank`` is informational).
(2) The dataset follows torchdata's ``Stateful`` protocol *per worker*: inside a data-loader worker,
``state_dict()`` is that worker's own position, and ``load_state_dict`` of it resumes that worker only — what
``torchdata.stateful_dataloader.StatefulDataLoader`` does with any ``num_workers``. The samples come from the
data path's :class:`~nessa.pipeline.SelectionSource` (the stage ``nessa train`` streams with).

Channels are opened lazily in the process that iterates (nothing crosses ``fork``); the dataset pickles as its
settings, so ``spawn`` workers work too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler, get_worker_info

from nessa.client import TLS, StorageClient
from nessa.errors import InvalidArgumentError
from nessa.order import Partition, epoch_seed, rank_positions, rank_share
from nessa.pipeline.source import SelectionSource
from nessa.records import Selection

__all__ = ["DecodeSample", "SelectionDataset", "SelectionLoader", "SelectionSampler", "rank_and_world"]

Sample = dict[str, Any]


class DecodeSample:
    """A ``transform`` for :class:`SelectionDataset`: ``data`` bytes → a float32 tensor in the model's layout.

    Raw arrays as stored (channel-last images channel-first), PNG/JPEG decoded and resized/cropped to
    ``image_size`` (the daemon's decode before the proxy), uint8 scaled by 1/255, then ``mean``/``std``; ``label``
    and ``weight`` become int64 and float32 tensors. See :class:`nessa.decode.InputDecoder`.

    Args:
        info: the dataset (``StorageClient(target).describe(name)``).
        image_size: png/jpeg datasets: the square size after decoding.
        image_mode: ``RGB`` or ``L``.
        mean: normalization mean.
        std: normalization std.
    """

    def __init__(
        self,
        info: Any,
        image_size: int = 0,
        image_mode: str = "RGB",
        mean: tuple[float, ...] = (),
        std: tuple[float, ...] = (),
    ) -> None:
        from nessa.decode import InputDecoder

        self.decoder = InputDecoder(info, image_size, image_mode, mean, std)

    def __call__(self, sample: Sample) -> Sample:
        """The sample with ``data``, ``label`` and ``weight`` as tensors."""
        out = dict(sample)
        out["data"] = self.decoder.decode([sample["data"]])[0]
        out["label"] = torch.tensor(int(sample["label"]), dtype=torch.int64)
        out["weight"] = torch.tensor(float(sample["weight"]), dtype=torch.float32)
        return out


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's ``(rank, world_size)``.

    As given, else from ``RANK``/``WORLD_SIZE``, else from an initialized ``torch.distributed``, else ``(0, 1)``.
    """
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = 0, 1
    return (int(rank) if rank is not None else r), (int(world_size) if world_size is not None else w)


class SelectionDataset(IterableDataset):
    """Stream a selection from a storage daemon as samples ``{"index", "label", "weight", "data"}``.

    ``data`` is the sample's stored bytes (decode it in ``transform``, e.g. with ``np.frombuffer``).

    Args:
        target: the daemon's ``host:port``.
        selection: a :class:`~nessa.client.Selection` (its size gives ``len``) or a selection id.
        dataset: the dataset name (checked against the selection's; required for ``len`` with an id only).
        token: bearer token.
        tls: TLS setting (see :class:`~nessa.client.StorageClient`; a path, not credentials, for spawned workers).
        batch_size: the ``DataLoader``'s batch size (worker blocks); 1 without workers is fine.
        shuffle: shuffle every epoch (by ``(seed, epoch)``); else the selection's order.
        seed: base seed of the shuffle.
        transform: applied to each sample dict; its result is what is yielded.
        rank: this rank (default from the environment, see :func:`rank_and_world`).
        world_size: number of ranks.
        remainder: ``pad`` (default: every rank ``ceil(n / world_size)`` samples, the first few repeated), ``drop``
            (every rank ``n // world_size``) or ``keep`` (exactly once, ranks differ by one: not for DDP); see the
            module.
        stream_batch_size: samples per streamed message.
        client_options: extra keyword arguments of :class:`~nessa.client.StorageClient`.
    """

    def __init__(
        self,
        target: str,
        selection: Selection | str,
        dataset: str | None = None,
        *,
        token: str | None = None,
        tls: TLS = None,
        batch_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        transform: Callable[[Sample], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: str = "pad",
        stream_batch_size: int = 256,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1; got {batch_size}")
        self.selection = selection
        if isinstance(selection, Selection):
            if dataset is not None and dataset != selection.dataset:
                raise InvalidArgumentError(
                    f"the selection is of dataset {selection.dataset!r}, not {dataset!r}; drop dataset= or fix it"
                )
            self.selection_id = selection.id
            self.dataset = selection.dataset
            self.size: int | None = len(selection)
        else:
            self.selection_id = str(selection)
            self.dataset = dataset or ""
            self.size = None
        self.target = target
        self.token = token
        self.tls = tls
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.transform = transform
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.remainder = str(remainder)
        Partition(world_size=self.world_size, rank=self.rank, remainder=self.remainder)  # validates
        self.stream_batch_size = int(stream_batch_size)
        self.client_options = dict(client_options or {})
        self.epoch = 0
        self._resume_epoch = -1
        self._resume_skip = 0
        self._resume_worker: dict[str, int] | None = None  # a worker's own saved position (Stateful per worker)
        self._consumed = 0
        self._part = Partition(world_size=self.world_size, rank=self.rank, remainder=self.remainder)
        self._position = 0
        self._client: StorageClient | None = None
        self._client_pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _client_pid=-1)
        return state

    def _get_client(self) -> StorageClient:
        if self._client is None or self._client_pid != os.getpid():
            self._client = StorageClient(self.target, token=self.token, tls=self.tls, **self.client_options)
            self._client_pid = os.getpid()
        return self._client

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch: its order is a pure function of ``(seed, epoch)``."""
        if epoch < 0:
            raise InvalidArgumentError(f"epoch must be >= 0; got {epoch}")
        self.epoch = int(epoch)

    @property
    def shuffle_seed(self) -> int | None:
        """The permutation seed of the current epoch (``None`` without shuffling)."""
        return epoch_seed(self.seed, self.epoch) if self.shuffle else None

    def resume_skip(self) -> int:
        """Samples of this rank to skip in the current epoch (from :meth:`load_state_dict`; else 0)."""
        return self._resume_skip if self._resume_epoch == self.epoch else 0

    def __len__(self) -> int:
        """Samples this rank receives per epoch (all its workers together)."""
        if self.size is None:  # built from an id: the daemon says how large it is (one GetSelection)
            self.size = len(self._get_client().get_selection(self.selection_id))
        return rank_share(self.size, self.world_size, self.rank, self.remainder)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip, position = self.resume_skip(), 0
        mine = self._resume_worker if self._resume_epoch == self.epoch else None
        if mine is not None:
            if (mine["worker"], mine["num_workers"]) != (worker, workers):
                raise InvalidArgumentError(
                    f"the state is of worker {mine['worker']} of {mine['num_workers']}, loaded into worker {worker} "
                    f"of {workers}; resume with the same num_workers"
                )
            skip, position = mine["rank_skip"], mine["position"]
        self._part = Partition(
            world_size=self.world_size,
            rank=self.rank,
            num_workers=workers,
            worker=worker,
            block_size=self.batch_size,
            skip=skip,
            remainder=self.remainder,
        )
        self._consumed = skip
        self._position = position
        source = SelectionSource(
            self._get_client(),
            self.selection if isinstance(self.selection, Selection) else self.selection_id,
            dataset=self.dataset or None,
            shuffle_seed=self.shuffle_seed,
            partition=self._part,
            message_size=self.stream_batch_size,
        )
        source.load_state_dict({"position": position})
        try:
            for batch in source:
                for index, label, weight, data in zip(
                    batch.indices.tolist(),
                    batch.labels.tolist(),
                    batch.weights.tolist(),
                    batch.samples.tobytes_list(),
                    strict=True,
                ):
                    sample: Sample = {"index": index, "label": label, "weight": weight, "data": data}
                    self._consumed += 1
                    self._position += 1
                    yield self.transform(sample) if self.transform is not None else sample
        finally:
            source.close()

    def state_dict(self, samples_consumed: int | None = None) -> dict[str, Any]:
        """Where this rank (or, inside a data-loader worker, this worker) is.

        Args:
            samples_consumed: samples of this rank the trainer consumed this epoch (what :class:`SelectionLoader`
                passes); default: what this process's iteration yielded.

        Returns:
            The selection, epoch, seed and rank layout; ``samples_consumed`` (rank level); and ``worker`` — this
            worker's own position — which :meth:`load_state_dict` uses when it is loaded into the same worker.
        """
        return {
            "selection_id": self.selection_id,
            "dataset": self.dataset,
            "epoch": self.epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "remainder": self.remainder,
            "samples_consumed": int(self._consumed if samples_consumed is None else samples_consumed),
            "worker": {
                "worker": self._part.worker,
                "num_workers": self._part.num_workers,
                "rank_skip": self._part.skip,
                "position": self._position,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration of ``state["epoch"]`` skips the samples already consumed.

        A state saved inside a data-loader worker (torchdata's ``StatefulDataLoader``) resumes that worker from its
        own position; a state from :class:`SelectionLoader` resumes the rank from ``samples_consumed``. The state
        may come from any rank of the same layout (rank 0's checkpoint restores every rank): this rank skips as
        many of its own samples.

        Raises:
            InvalidArgumentError: the state is of another selection, seed, world size or remainder.
        """
        for key in ("selection_id", "seed", "shuffle", "world_size", "remainder"):
            if key in state and state[key] != getattr(self, key):
                raise InvalidArgumentError(
                    f"state is for {key}={state[key]!r} but this dataset has {getattr(self, key)!r}; build the "
                    "dataset with the same selection, seed, shuffle, world size and remainder to resume"
                )
        consumed = int(state.get("samples_consumed", 0))
        if consumed < 0:
            raise InvalidArgumentError(f"samples_consumed must be >= 0; got {consumed}")
        self.epoch = int(state.get("epoch", self.epoch))
        self._resume_epoch = self.epoch
        self._resume_skip = consumed
        self._consumed = consumed
        worker = state.get("worker")
        in_worker = get_worker_info() is not None
        self._resume_worker = {k: int(v) for k, v in worker.items()} if worker and in_worker else None


class SelectionLoader(DataLoader):
    """A ``DataLoader`` over a :class:`SelectionDataset` that counts the samples the trainer consumed.

    ``batch_size`` is the dataset's (worker blocks must match loader batches). ``state_dict()`` /
    ``load_state_dict()`` save and restore the position inside an epoch with any ``num_workers``.

    Args:
        dataset: the selection dataset.
        **kwargs: ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ``multiprocessing_context``, ...).
    """

    def __init__(self, dataset: SelectionDataset, **kwargs: Any) -> None:
        batch_size = kwargs.pop("batch_size", dataset.batch_size)
        if batch_size != dataset.batch_size:
            raise InvalidArgumentError(
                f"loader batch_size {batch_size} differs from the dataset's {dataset.batch_size}; build the "
                "SelectionDataset with the loader's batch size"
            )
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.selection = dataset
        self.samples_consumed = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self.samples_consumed = self.selection.resume_skip()
        for batch in super().__iter__():
            self.samples_consumed += _batch_len(batch)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The dataset's state with the samples consumed through this loader."""
        return self.selection.state_dict(samples_consumed=self.samples_consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        self.selection.load_state_dict(state)
        self.samples_consumed = int(state.get("samples_consumed", 0))


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        first = batch.get("index", next(iter(batch.values())))
        return len(first)
    if isinstance(batch, list | tuple):
        return len(batch[0]) if batch and hasattr(batch[0], "__len__") else len(batch)
    return len(batch)


class SelectionSampler(Sampler[int]):
    """Yield a selection's dataset indices, for a map-style dataset of the same samples.

    The order is the one the daemon would stream (:mod:`nessa.order`): shuffled by ``(seed, epoch)``, split by rank.

    Args:
        selection: the selection.
        shuffle: shuffle every epoch.
        seed: base seed of the shuffle.
        rank: this rank (default from the environment).
        world_size: number of ranks.
        remainder: ``pad``, ``drop`` or ``keep``, as in :class:`SelectionDataset`.
    """

    def __init__(
        self,
        selection: Selection,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: str = "pad",
    ) -> None:
        self.indices = np.asarray(selection.indices, dtype=np.int64)
        self.weights = np.asarray(selection.weights, dtype=np.float32)
        self._weight_of = dict(zip(self.indices.tolist(), self.weights.tolist(), strict=True))
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.remainder = str(remainder)
        Partition(world_size=self.world_size, rank=self.rank, remainder=self.remainder)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (the order is a pure function of ``(seed, epoch)``)."""
        if epoch < 0:
            raise InvalidArgumentError(f"epoch must be >= 0; got {epoch}")
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        seed = epoch_seed(self.seed, self.epoch) if self.shuffle else None
        positions = rank_positions(len(self.indices), seed, self.world_size, self.rank, self.remainder)
        return iter(self.indices[positions].tolist())

    def __len__(self) -> int:
        return rank_share(len(self.indices), self.world_size, self.rank, self.remainder)

    def weight(self, index: int) -> float:
        """The weight of a selected dataset index (``KeyError`` if it is not selected)."""
        return self._weight_of[int(index)]

    def weight_tensor(self, indices: Any) -> torch.Tensor:
        """Weights of a batch of selected dataset indices, as a float32 tensor (for a weighted loss)."""
        idx = indices.tolist() if hasattr(indices, "tolist") else list(indices)
        return torch.tensor([self._weight_of[int(i)] for i in idx], dtype=torch.float32)
