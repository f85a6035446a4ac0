"""The first stage: a selection streamed from a daemon, in a seeded order, with its weights attached once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from nessa.client import Batch, StorageClient
from nessa.errors import InvalidArgumentError, NotFoundError
from nessa.order import Partition
from nessa.pipeline.base import Stage, StageState
from nessa.records import Selection

__all__ = ["SelectionSource"]


class SelectionSource(Stage[Batch]):
    """Stream one part of a selection (or of explicit indices) as the daemon's messages.

    Args:
        client: the daemon's client.
        selection: a :class:`~nessa.records.Selection` (preferred: if the daemon no longer has it — evicted, or a
            restart without its state — its saved indices are streamed in the same order with its weights), a
            selection id, or dataset indices (weight 1).
        dataset: dataset name (required with indices).
        shuffle_seed: the epoch's order (``None``: the selection's order).
        partition: this consumer's rank/worker part; its ``worker_skip`` is set from the loaded state.
        message_size: most samples per streamed message.
        on_gone: called with a message when a Selection had to be streamed by its saved indices.

    The position counts samples delivered in this part (after ``partition.skip``).
    """

    def __init__(
        self,
        client: StorageClient,
        selection: Selection | str | np.ndarray,
        *,
        dataset: str | None = None,
        shuffle_seed: int | None = None,
        partition: Partition | None = None,
        message_size: int = 256,
        on_gone: Callable[[str], None] | None = None,
    ) -> None:
        if message_size < 1:
            raise InvalidArgumentError(f"message_size must be >= 1; got {message_size}")
        self.client = client
        self.selection = selection
        self.dataset = dataset
        self.shuffle_seed = shuffle_seed
        self.partition = partition or Partition()
        self.message_size = int(message_size)
        self.on_gone = on_gone
        self._start = 0
        self._position = 0
        self._it: Iterator[Batch] | None = None

    def state_dict(self) -> StageState:
        """``{"position": samples of this part delivered}``."""
        return {"position": self._position}

    def load_state_dict(self, state: StageState) -> None:
        """Resume after ``state["position"]`` samples of this part."""
        if self._it is not None:
            raise InvalidArgumentError("load the state before iterating; build a new source to resume")
        position = int(state.get("position", 0))
        if position < 0:
            raise InvalidArgumentError(f"position must be >= 0; got {position}")
        self._start = self._position = position

    def _stream(self, what: Selection | str | np.ndarray) -> Iterator[Batch]:
        part = replace(self.partition, worker_skip=self.partition.worker_skip + self._start)
        return self.client.stream(
            what, dataset=self.dataset, batch_size=self.message_size, shuffle_seed=self.shuffle_seed, partition=part
        )

    def _by_indices(self, sel: Selection) -> Iterator[Batch]:
        weight_of = dict(zip(sel.indices.tolist(), sel.weights.tolist(), strict=True))
        for batch in self._stream(sel.indices):
            batch.weights = np.asarray([weight_of[i] for i in batch.indices.tolist()], dtype=np.float32)
            yield batch

    def _batches(self) -> Iterator[Batch]:
        sel = self.selection
        if isinstance(sel, Selection) and not sel.id:  # a part of a selection (Selection.part): by its indices
            yield from self._by_indices(sel)
            return
        stream = self._stream(sel)
        try:
            first = next(stream, None)
        except NotFoundError:
            if not isinstance(sel, Selection):
                raise
            if self.on_gone is not None:
                self.on_gone(f"selection {sel.id} is gone from the daemon; streaming its saved indices")
            yield from self._by_indices(sel)
            return
        if first is None:
            return
        yield first
        yield from stream

    def __next__(self) -> Batch:
        if self._it is None:
            if isinstance(self.selection, Selection) and self.dataset is None:
                self.dataset = self.selection.dataset
            self._it = self._batches()
        batch = next(self._it)
        self._position += len(batch)
        return batch

    def close(self) -> None:
        """Stop the stream (the daemon stops reading for it)."""
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
