"""Streaming samples: the order of a stream, its cursor, and messages bounded in bytes.

A stream is a list of dataset indices with a weight each (a selection, or explicit indices with weight 1), put
in delivery order by :func:`nessa.order.stream_positions` (seeded shuffle, rank and worker split). Messages carry
at most ``batch_size`` samples and ``max_batch_bytes`` of sample payload, and never more than the message limit
with their metadata. A sample larger than ``max_batch_bytes`` is sent alone, as consecutive *pieces* of at most
``max_batch_bytes`` each (the client joins them).

The cursor sent with every message is ``<stream key>.<position>``: the key is a hash of what defines the order
(dataset, source, seed, partition), the position the number of samples of this stream delivered through that
message. Resuming with a cursor restarts right after it, so with the cursor of the last message a client fully
received, every sample arrives exactly once. Pieces of a split sample carry the cursor from before the sample;
only the last piece advances it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from nessa.errors import InvalidArgumentError, OutOfRangeError, ResourceExhaustedError
from nessa.order import Partition, stream_positions
from nessa.packed import encode_head
from nessa.services.storage.cancel import CancelToken
from nessa.services.storage.catalog import DatasetEntry
from nessa.store import DatasetReader

__all__ = [
    "MAX_BATCH_SIZE",
    "OutgoingBatch",
    "StreamPlan",
    "decode_cursor",
    "encode_cursor",
    "iter_batches",
    "plan_stream",
]


#: Most samples one message may carry.
MAX_BATCH_SIZE = 65536
#: Upper bound of the metadata one sample adds to a message (packed index, label, weight; bytes tag + length).
PER_SAMPLE_OVERHEAD = 32
#: Upper bound of a message's own metadata (field tags, cursor, position, total, piece fields).
MESSAGE_OVERHEAD = 1024
_CURSOR_RE = re.compile(r"^([0-9a-f]{16})\.([0-9]{1,19})$")


@dataclass
class OutgoingBatch:
    """One message's worth of a stream; :meth:`encode` reads its samples and serializes it.

    Attributes:
        indices: dataset indices.
        labels: their labels.
        weights: their weights.
        sizes: the stored size of each sample (for a piece, the piece's size); ``None`` for metadata only.
        position: samples of the stream delivered through this message.
        total: samples in the stream.
        cursor: where to resume after this message.
        reader: where whole samples are read from (``None`` for metadata only and for pieces).
        piece: the piece's bytes (pieces only).
        piece_offset: offset of the piece in its sample (pieces only).
        sample_size: size of the whole sample (pieces only; 0 for whole samples).
    """

    indices: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    sizes: np.ndarray | None
    position: int
    total: int
    cursor: str
    reader: DatasetReader | None = None
    piece: memoryview | None = None
    piece_offset: int = 0
    sample_size: int = 0

    @property
    def payload_bytes(self) -> int:
        """Sample bytes in this message."""
        return int(self.sizes.sum()) if self.sizes is not None else 0

    def encode(self) -> bytes:
        """The serialized ``SampleBatch``: its head, then the samples read from LMDB straight into the message."""
        head = encode_head(
            self.indices,
            self.labels,
            self.weights,
            self.sizes,
            cursor=self.cursor,
            position=self.position,
            total=self.total,
            piece_offset=self.piece_offset,
            sample_size=self.sample_size,
        )
        if self.piece is not None:
            return head + self.piece
        if self.reader is None or self.sizes is None:
            return head
        return self.reader.read_joined(self.indices, head)


@dataclass
class StreamPlan:
    """What one stream delivers and from where.

    Attributes:
        entry: the dataset.
        key: the stream key of its cursors.
        indices: dataset indices of the whole stream, in delivery order.
        weights: their weights.
        start: the position to start from (from the cursor; 0 without one).
    """

    entry: DatasetEntry
    key: str
    indices: np.ndarray
    weights: np.ndarray
    start: int = 0
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.labels = self.entry.labels[self.indices] if len(self.indices) else np.zeros(0, np.int64)

    @property
    def total(self) -> int:
        """Samples in the whole stream (delivered or not)."""
        return len(self.indices)


def encode_cursor(key: str, position: int) -> str:
    """The cursor of ``position`` in the stream ``key``."""
    return f"{key}.{int(position)}"


def decode_cursor(cursor: str) -> tuple[str, int]:
    """Split a cursor into its stream key and position.

    Raises:
        InvalidArgumentError: not a cursor.
    """
    match = _CURSOR_RE.fullmatch(cursor or "")
    if match is None:
        raise InvalidArgumentError(
            f"{cursor!r} is not a stream cursor; pass the cursor of a SampleBatch unchanged (or none to start over)"
        )
    return match.group(1), int(match.group(2))


def _stream_key(dataset: str, source_key: str, shuffle_seed: int | None, partition: Partition) -> str:
    what = {
        "dataset": dataset,
        "source": source_key,
        "shuffle_seed": shuffle_seed,
        "partition": [partition.world_size, partition.rank, partition.num_workers, partition.worker,
                      partition.block_size, partition.skip, partition.worker_skip]
                     + ([partition.remainder] if partition.remainder != "keep" else []),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def plan_stream(
    entry: DatasetEntry,
    indices: np.ndarray,
    weights: np.ndarray,
    source_key: str,
    shuffle_seed: int | None = None,
    partition: Partition | None = None,
    cursor: str = "",
) -> StreamPlan:
    """Put a stream in order and find where it resumes.

    Args:
        entry: the dataset.
        indices: dataset indices of the source (a selection's, or explicit ones), in its order.
        weights: one weight per index.
        source_key: identifies the source (a selection id, or a hash of the explicit indices).
        shuffle_seed: permute with this seed; ``None`` keeps the source order.
        partition: the rank/worker part to stream; ``None`` for all of it.
        cursor: resume after this cursor ("" to start at the beginning).

    Raises:
        InvalidArgumentError: a cursor of another stream, or a bad partition.
        OutOfRangeError: an index past the end of the dataset, a cursor or skip past the end of the stream.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n = len(entry)
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise OutOfRangeError(
                f"index {bad} is outside dataset {entry.name!r} of {n} samples; give indices in [0, {n})"
            )
    part = partition or Partition()
    positions = stream_positions(len(indices), shuffle_seed, part)
    key = _stream_key(entry.name, source_key, shuffle_seed, part)
    start = 0
    if cursor:
        cursor_key, start = decode_cursor(cursor)
        if cursor_key != key:
            raise InvalidArgumentError(
                "the cursor belongs to another stream (different dataset, selection, indices, shuffle seed or "
                "partition); resume with the same request the cursor came from, or drop the cursor to start over"
            )
        if start > len(positions):
            raise OutOfRangeError(f"cursor position {start} is past the end of this stream of {len(positions)} samples")
    return StreamPlan(
        entry=entry,
        key=key,
        indices=indices[positions],
        weights=np.asarray(weights, dtype=np.float32)[positions],
        start=start,
    )


def check_limits(batch_size: int, max_batch_bytes: int, limit: int) -> None:
    """Validate a request's batch size and bytes against the daemon's limits.

    Raises:
        InvalidArgumentError: a negative value.
        ResourceExhaustedError: over the daemon's limits.
    """
    if batch_size < 0 or max_batch_bytes < 0:
        raise InvalidArgumentError("batch_size and max_batch_bytes must be >= 0 (0 for the daemon's default)")
    if batch_size > MAX_BATCH_SIZE:
        raise ResourceExhaustedError(
            f"batch_size {batch_size} is over this daemon's limit of {MAX_BATCH_SIZE} samples per message; ask for "
            "fewer (messages are also bounded in bytes, so large batches gain little)"
        )
    if max_batch_bytes > limit:
        raise ResourceExhaustedError(
            f"max_batch_bytes {max_batch_bytes} is over this daemon's limit of {limit} bytes per message; ask for "
            f"at most {limit} (larger samples are split into pieces anyway)"
        )


def iter_batches(
    plan: StreamPlan,
    batch_size: int,
    max_batch_bytes: int,
    max_message_bytes: int,
    metadata_only: bool = False,
    cancel: CancelToken | None = None,
) -> Iterator[OutgoingBatch]:
    """Yield the stream's messages from ``plan.start`` on.

    Args:
        plan: the stream.
        batch_size: most samples per message (>= 1).
        max_batch_bytes: most sample payload per message, and the piece size of larger samples.
        max_message_bytes: the message limit (payload plus metadata stay under it).
        metadata_only: send indices, labels and weights without sample bytes.
        cancel: checked before every read.
    """
    cancel = cancel or CancelToken()
    total = plan.total
    pos = plan.start
    key = plan.key
    room = max_message_bytes - MESSAGE_OVERHEAD
    count_cap = max(1, min(batch_size, (room - max_batch_bytes) // PER_SAMPLE_OVERHEAD))
    if metadata_only:
        count_cap = max(1, min(batch_size, room // PER_SAMPLE_OVERHEAD))
        while pos < total:
            cancel.check()
            end = min(total, pos + count_cap)
            yield OutgoingBatch(
                indices=plan.indices[pos:end],
                labels=plan.labels[pos:end],
                weights=plan.weights[pos:end],
                sizes=None,
                position=end,
                total=total,
                cursor=encode_cursor(key, end),
            )
            pos = end
        return
    reader = plan.entry.reader
    sizes = plan.entry.sizes[plan.indices]
    while pos < total:
        cancel.check()
        size = int(sizes[pos])
        if size > max_batch_bytes:  # alone, in pieces
            blob = memoryview(reader.read(plan.indices[pos : pos + 1])[0])
            for off in range(0, size, max_batch_bytes):
                cancel.check()
                after = pos + 1 if off + max_batch_bytes >= size else pos
                piece = blob[off : off + max_batch_bytes]
                yield OutgoingBatch(
                    indices=plan.indices[pos : pos + 1],
                    labels=plan.labels[pos : pos + 1],
                    weights=plan.weights[pos : pos + 1],
                    sizes=np.array([len(piece)], dtype=np.int64),
                    position=after,
                    total=total,
                    cursor=encode_cursor(key, after),
                    piece=piece,
                    piece_offset=off,
                    sample_size=size,
                )
            pos += 1
            continue
        # As many whole samples as fit the count and byte bounds (at least this one, which fits).
        fits = int(np.searchsorted(np.cumsum(sizes[pos : pos + count_cap]), max_batch_bytes, side="right"))
        end = pos + max(1, fits)
        yield OutgoingBatch(
            indices=plan.indices[pos:end],
            labels=plan.labels[pos:end],
            weights=plan.weights[pos:end],
            sizes=sizes[pos:end],
            position=end,
            total=total,
            cursor=encode_cursor(key, end),
            reader=reader,
        )
        pos = end


@dataclass
class _End:
    error: BaseException | None = None
