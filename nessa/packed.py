"""Packed sample batches: many samples as one bytes blob plus an offsets array, and their ``SampleBatch`` wire form.

A stream message (``nessa.v1.SampleBatch``) carries its per-sample fields as little-endian arrays (indices and
labels ``<i8``, weights ``<f4``, offsets ``<u8``) and the samples' bytes back to back in one ``data`` field, the
last of the message. Neither side then touches a field per sample:

* the daemon builds the message head (every field but the blob, then the blob's tag and length, known in advance
  from the dataset's sizes) with :func:`encode_head`, and the reader joins the head and the values it reads out of
  LMDB (``buffers=True``) into the serialized message, one copy from the memory map;
* the client parses the message with :func:`decode_sample_batch`, which walks its dozen fields and returns the
  arrays and the blob as views of the received bytes (no copy), as a :class:`PackedSamples`.

:class:`PackedSamples` is a sequence of ``memoryview`` (one per sample) over one buffer: slicing it is free,
:meth:`PackedSamples.concat` joins several in one copy, :meth:`PackedSamples.as_array` views equal-sized samples as
one ndarray. It pickles as bytes (data-loader workers can pass it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from nessa.errors import DataCorruptionError
from nessa.v1 import storage_pb2 as pb

__all__ = ["DecodedBatch", "PackedSamples", "decode_sample_batch", "encode_head"]

_I8 = np.dtype("<i8")
_U8 = np.dtype("<u8")
_F4 = np.dtype("<f4")
_F = pb.SampleBatch
_DATA_TAG = bytes([(_F.DATA_FIELD_NUMBER << 3) | 2])


class PackedSamples(Sequence[memoryview]):
    """Samples as views of one buffer: sample ``i`` is ``data[offsets[i]:offsets[i + 1]]``.

    Args:
        data: the buffer (bytes, bytearray or a memoryview of bytes).
        offsets: ``len + 1`` non-decreasing byte offsets into ``data``.
    """

    __slots__ = ("data", "offsets")

    def __init__(self, data: bytes | bytearray | memoryview, offsets: np.ndarray) -> None:
        self.data = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
        self.offsets = np.asarray(offsets, dtype=np.int64)

    @classmethod
    def from_samples(cls, samples: Iterable[bytes | bytearray | memoryview]) -> PackedSamples:
        """Pack separate samples (one copy)."""
        parts = list(samples)
        sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        return cls(b"".join(parts), np.concatenate(([0], np.cumsum(sizes))))

    @classmethod
    def concat(cls, parts: Sequence[PackedSamples]) -> PackedSamples:
        """One :class:`PackedSamples` of all of ``parts`` in order (no copy for one part, else one)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls(b"", np.zeros(1, np.int64))
        blob = b"".join(p.contiguous() for p in parts)
        sizes = np.concatenate([np.diff(p.offsets) for p in parts])
        return cls(blob, np.concatenate(([0], np.cumsum(sizes))))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> memoryview: ...

    @overload
    def __getitem__(self, i: slice) -> PackedSamples: ...

    def __getitem__(self, i: int | slice) -> memoryview | PackedSamples:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise IndexError("PackedSamples slices take step 1")
            return PackedSamples(self.data, self.offsets[start : max(start, stop) + 1])
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} of {n}")
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __iter__(self) -> Iterator[memoryview]:
        data, off = self.data, self.offsets.tolist()
        for a, b in itertools.pairwise(off):
            yield data[a:b]

    @property
    def sizes(self) -> np.ndarray:
        """Each sample's size in bytes (int64)."""
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        """Bytes of all samples."""
        return int(self.offsets[-1] - self.offsets[0]) if len(self.offsets) else 0

    def contiguous(self) -> memoryview:
        """The samples' bytes back to back: a view, no copy."""
        return self.data[int(self.offsets[0]) : int(self.offsets[-1])] if len(self.offsets) else self.data[:0]

    def as_array(self, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        """A read-only ``(len, *shape)`` ndarray view of equal-sized samples (no copy).

        Raises:
            DataCorruptionError: the samples are not all ``prod(shape) * itemsize`` bytes.
        """
        dt = np.dtype(dtype)
        each = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        sizes = self.sizes
        if len(sizes) and not (sizes == each).all():
            bad = int(np.flatnonzero(sizes != each)[0])
            raise DataCorruptionError(
                f"sample {bad} of a batch has {int(sizes[bad])} bytes, not {each} (shape {tuple(shape)} of {dt}); "
                "the daemon serves another layout than it describes — re-ingest the dataset"
            )
        return np.frombuffer(self.contiguous(), dtype=dt).reshape(len(self), *shape)

    def tobytes_list(self) -> list[bytes]:
        """Each sample as its own ``bytes`` (copies)."""
        return [bytes(v) for v in self]

    def __reduce__(self) -> tuple[Any, ...]:
        return (PackedSamples, (bytes(self.contiguous()), self.offsets - self.offsets[0]))

    def __repr__(self) -> str:
        return f"PackedSamples({len(self)} samples, {self.nbytes} bytes)"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_head(
    indices: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    sizes: np.ndarray | None,
    *,
    cursor: str,
    position: int,
    total: int,
    piece_offset: int = 0,
    sample_size: int = 0,
) -> bytes:
    """Every field of a ``SampleBatch`` but the blob's bytes: append ``sum(sizes)`` bytes of samples to finish it.

    Args:
        indices: dataset indices.
        labels: their labels.
        weights: their weights.
        sizes: the byte size of each sample (of the piece, for a piece); ``None`` for a metadata-only message.
        cursor: where to resume after this message.
        position: samples of the stream delivered through this message.
        total: samples in the stream.
        piece_offset: a piece's offset in its sample.
        sample_size: a piece's whole sample size (0 for whole samples).
    """
    meta = _F(
        indices=np.asarray(indices, dtype=_I8).tobytes(),
        labels=np.asarray(labels, dtype=_I8).tobytes(),
        weights=np.asarray(weights, dtype=_F4).tobytes(),
        piece_offset=piece_offset,
        sample_size=sample_size,
        cursor=cursor,
        position=position,
        total=total,
    )
    if sizes is None:
        return meta.SerializeToString()
    offsets = np.zeros(len(sizes) + 1, dtype=_U8)
    np.cumsum(sizes, out=offsets[1:])
    meta.offsets = offsets.tobytes()
    nbytes = int(offsets[-1])
    return meta.SerializeToString() + (_DATA_TAG + _varint(nbytes) if nbytes else b"")


@dataclass
class DecodedBatch:
    """A parsed ``SampleBatch``; the arrays and samples are views of the message's bytes.

    Attributes:
        indices: int64 dataset indices (read-only view).
        labels: int64 labels (read-only view).
        weights: float32 weights (read-only view).
        samples: the samples (empty for a metadata-only message).
        piece_offset: a piece's offset in its sample.
        sample_size: a piece's whole sample size (0 for whole samples).
        cursor: where to resume after this message.
        position: samples delivered through this message.
        total: samples in the stream.
        wire_bytes: the message's serialized size.
    """

    indices: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    samples: PackedSamples
    piece_offset: int
    sample_size: int
    cursor: str
    position: int
    total: int
    wire_bytes: int


def _bad(what: str) -> DataCorruptionError:
    return DataCorruptionError(f"a SampleBatch message is malformed ({what}); this is a daemon or transport bug")


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _bad("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _bad("varint longer than 10 bytes")


_NUMBERS = {
    _F.INDICES_FIELD_NUMBER: "indices",
    _F.LABELS_FIELD_NUMBER: "labels",
    _F.WEIGHTS_FIELD_NUMBER: "weights",
    _F.OFFSETS_FIELD_NUMBER: "offsets",
    _F.PIECE_OFFSET_FIELD_NUMBER: "piece_offset",
    _F.SAMPLE_SIZE_FIELD_NUMBER: "sample_size",
    _F.CURSOR_FIELD_NUMBER: "cursor",
    _F.POSITION_FIELD_NUMBER: "position",
    _F.TOTAL_FIELD_NUMBER: "total",
    _F.DATA_FIELD_NUMBER: "data",
}
if set(_NUMBERS.values()) != {f.name for f in _F.DESCRIPTOR.fields}:  # the proto changed: this parser must follow
    raise RuntimeError("nessa.packed does not know every SampleBatch field; update _NUMBERS and decode_sample_batch")


def decode_sample_batch(message: bytes) -> DecodedBatch:
    """Parse a serialized ``SampleBatch`` without copying its arrays or samples (unknown fields are skipped).

    Raises:
        DataCorruptionError: a malformed message, or arrays and offsets that do not agree.
    """
    buf = memoryview(message)
    fields: dict[str, Any] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, kind = key >> 3, key & 7
        value: int | memoryview | None
        if kind == 0:
            value, pos = _read_varint(buf, pos)
        elif kind == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > end:
                raise _bad("a field runs past the end")
            value, pos = buf[pos : pos + size], pos + size
        elif kind == 1:
            value, pos = None, pos + 8
        elif kind == 5:
            value, pos = None, pos + 4
        else:
            raise _bad(f"wire type {kind}")
        name = _NUMBERS.get(number)
        if name is not None:
            fields[name] = value
    empty = buf[:0]
    indices = np.frombuffer(fields.get("indices", empty), dtype=_I8)
    labels = np.frombuffer(fields.get("labels", empty), dtype=_I8)
    weights = np.frombuffer(fields.get("weights", empty), dtype=_F4)
    n = len(indices)
    if len(labels) != n or len(weights) != n:
        raise _bad(f"{n} indices, {len(labels)} labels, {len(weights)} weights")
    data = fields.get("data", empty)
    raw_offsets = fields.get("offsets", empty)
    if len(raw_offsets):
        offsets = np.frombuffer(raw_offsets, dtype=_U8).astype(np.int64)
        if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(data) or (np.diff(offsets) < 0).any():
            raise _bad(f"offsets do not describe {n} samples in {len(data)} bytes")
    else:
        if len(data):
            raise _bad("sample bytes without offsets")
        offsets = np.zeros(1, np.int64)
    return DecodedBatch(
        indices=indices,
        labels=labels,
        weights=weights,
        samples=PackedSamples(data, offsets),
        piece_offset=int(fields.get("piece_offset", 0)),
        sample_size=int(fields.get("sample_size", 0)),
        cursor=str(fields.get("cursor", empty), "utf-8"),
        position=int(fields.get("position", 0)),
        total=int(fields.get("total", 0)),
        wire_bytes=len(message),
    )
