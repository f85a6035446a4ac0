"""The LMDB-sharded dataset store: ingest, read, verify.

A dataset is a directory holding ``manifest.json``, ``labels.npy``, ``sizes.npy`` and one LMDB environment per
shard (``shards/00000/`` ...), keyed by the global sample index as 8 big-endian bytes; see
:mod:`nessa.store.manifest` for the format and what the checksums cover, :mod:`nessa.store.atomic` for how an
ingest publishes all or nothing, :mod:`nessa.store.sources` for the sources.

Typical use::

    from nessa.store import ingest, ingest_arrays, open_dataset, verify

    ingest("mnist1d", "/data/mnist1d", shards=2)           # also writes /data/mnist1d-test
    ingest_arrays(x, y, "/data/mine")                      # numpy arrays
    with open_dataset("/data/mnist1d") as ds:
        batch = ds.read_arrays([3, 1, 4, 1, 5])            # (5, 40) float32
        raw = ds.read([2, 7])                              # [bytes, bytes]
    verify("/data/mnist1d")                                # raises DataCorruptionError naming a bad shard
"""

from __future__ import annotations

from nessa.store.manifest import FORMAT_VERSION, Codec, ColumnInfo, Manifest, ShardInfo
from nessa.store.reader import DatasetReader, open_dataset
from nessa.store.sources import FORMATS, GENERATED, ingest, load_source, synthetic_arrays
from nessa.store.verify import Problem, VerifyReport, verify
from nessa.store.writer import TEST_SUFFIX, Split, ingest_arrays, ingest_encoded, ingest_splits, write_dataset

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "GENERATED",
    "TEST_SUFFIX",
    "Codec",
    "ColumnInfo",
    "DatasetReader",
    "Manifest",
    "Problem",
    "ShardInfo",
    "Split",
    "VerifyReport",
    "ingest",
    "ingest_arrays",
    "ingest_encoded",
    "ingest_splits",
    "load_source",
    "open_dataset",
    "synthetic_arrays",
    "verify",
    "write_dataset",
]
