"""Per-sample checksums: the 64-bit XXH3 hash of every stored value, kept in ``checksums.npy``.

A dataset written by this nessa records, besides the per-shard SHA-256 of :mod:`nessa.store.manifest`, one
checksum per sample: ``xxh3_64(value)`` (seed 0) of the value's stored bytes, as ``checksums.npy`` (``<u8``, one
per sample, itself covered by the manifest's ``files`` SHA-256) and ``"sample_checksum": "xxh3_64"`` in the
manifest. :meth:`nessa.store.DatasetReader.read` checks every value it returns against it, so a flipped byte is a
:class:`SampleCorruptionError` at read time, never a silently wrong sample. XXH3 (the ``xxhash`` package, a C
implementation) costs about as much per sample as taking its length, so reads stay as fast as before.

Datasets written before checksums existed have neither the file nor the manifest key: they open, with a warning,
and their reads are not verified; :func:`nessa.store.verify.add_checksums` (``nessa verify --add-checksums``)
upgrades them after checking their shards against the manifest's SHA-256.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xxhash

from nessa.errors import DataCorruptionError

__all__ = [
    "ALGORITHM",
    "ALGORITHMS",
    "CHECKSUMS_FILE",
    "SampleCorruptionError",
    "checksum",
    "checksums",
]

#: The algorithm this code writes (the manifest's ``sample_checksum``).
ALGORITHM = "xxh3_64"
#: Algorithms this code can verify.
ALGORITHMS = (ALGORITHM,)
CHECKSUMS_FILE = "checksums.npy"
CHECKSUM_DTYPE = np.dtype("<u8")

#: ``checksum(value) -> int``: the 64-bit XXH3 of a bytes-like value.
checksum = xxhash.xxh3_64_intdigest


def checksums(values: Iterable[bytes | bytearray | memoryview], count: int = -1) -> np.ndarray:
    """The checksum of every value, as a ``uint64`` array (``count``: the number of values, if known)."""
    return np.fromiter(map(checksum, values), dtype=np.uint64, count=count)


class SampleCorruptionError(DataCorruptionError):
    """A stored value that does not match its checksum (``DATA_LOSS``).

    Attributes:
        dataset: the dataset's name.
        shard: the shard number.
        indices: the global indices of the corrupt samples found in the read.
    """

    def __init__(self, dataset: str, shard: int, indices: list[int]) -> None:
        more = f" and {len(indices) - 1} more" if len(indices) > 1 else ""
        super().__init__(
            f"dataset {dataset!r}, shard {shard} (shards/{shard:05d}): sample {indices[0]}{more} does not match its "
            "stored checksum (the stored bytes were modified or corrupted); nothing was returned for this read. "
            "Run `nessa verify` on the dataset and re-ingest it (or restore the shard from a copy)"
        )
        self.dataset = dataset
        self.shard = shard
        self.indices = list(indices)
