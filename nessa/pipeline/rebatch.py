"""Regroup the daemon's messages (bounded in bytes) into batches of exactly ``batch_size`` samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nessa.client import Batch
from nessa.errors import InvalidArgumentError
from nessa.packed import PackedSamples
from nessa.pipeline.base import Stage, StageState

__all__ = ["Rebatch", "SampleBatch"]


@dataclass
class SampleBatch:
    """Samples still as stored bytes.

    Attributes:
        indices: int64 dataset indices.
        labels: int64 labels.
        weights: float32 weights.
        samples: the samples' stored bytes (views of the received messages when the batch lies in one of them;
            else joined, one copy).
        payload_bytes: sample bytes these samples took on the wire.
    """

    indices: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    samples: PackedSamples
    payload_bytes: int

    def __len__(self) -> int:
        return len(self.indices)


class Rebatch(Stage[SampleBatch]):
    """Batches of ``batch_size`` samples (the last one may be shorter) from a stream of messages.

    Its position is the upstream's minus the samples it holds.
    """

    def __init__(self, upstream: Stage[Batch], batch_size: int) -> None:
        if batch_size < 1:
            raise InvalidArgumentError(f"batch size must be >= 1; got {batch_size}")
        self.upstream = upstream
        self.batch_size = int(batch_size)
        self._idx: list[np.ndarray] = []
        self._lab: list[np.ndarray] = []
        self._wts: list[np.ndarray] = []
        self._data: list[PackedSamples] = []
        self._held = 0
        self._done = False

    def state_dict(self) -> StageState:
        """The upstream's position less what is held here."""
        state = dict(self.upstream.state_dict())
        state["position"] = int(state.get("position", 0)) - self._held
        return state

    def load_state_dict(self, state: StageState) -> None:
        """Resume the upstream at ``state`` (nothing is held yet)."""
        self.upstream.load_state_dict(state)

    def _emit(self, count: int) -> SampleBatch:
        i, y, w = np.concatenate(self._idx), np.concatenate(self._lab), np.concatenate(self._wts)
        parts: list[PackedSamples] = []
        need = count
        while need:
            head = self._data[0]
            if len(head) <= need:
                parts.append(self._data.pop(0))
                need -= len(head)
            else:
                parts.append(head[:need])
                self._data[0] = head[need:]
                need = 0
        taken = PackedSamples.concat(parts)
        out = SampleBatch(
            indices=i[:count].copy(),
            labels=y[:count].copy(),
            weights=w[:count].astype(np.float32, copy=True),
            samples=taken,
            payload_bytes=taken.nbytes,
        )
        self._idx, self._lab, self._wts = [i[count:]], [y[count:]], [w[count:]]
        self._held -= count
        return out

    def __next__(self) -> SampleBatch:
        while self._held < self.batch_size and not self._done:
            try:
                msg = next(self.upstream)
            except StopIteration:
                self._done = True
                break
            if len(msg) == 0:
                continue
            self._idx.append(msg.indices)
            self._lab.append(msg.labels)
            self._wts.append(msg.weights)
            if len(msg.samples) != len(msg):
                raise InvalidArgumentError(
                    f"a message of {len(msg)} samples carries {len(msg.samples)} samples' bytes; stream with sample "
                    "bytes (not metadata_only) to rebatch"
                )
            self._data.append(msg.samples)
            self._held += len(msg)
        if self._held == 0:
            raise StopIteration
        return self._emit(min(self._held, self.batch_size))

    def close(self) -> None:
        """Close the upstream."""
        self.upstream.close()
