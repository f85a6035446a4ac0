"""The on-disk description of a dataset: ``manifest.json``, its codec and shard table, and the key format.

A dataset is a directory::

    <name>/
      manifest.json     this module's :class:`Manifest`, written last (its presence marks a complete dataset)
      labels.npy        int64 label per sample, shape (n,)
      sizes.npy         int64 stored byte length per sample, shape (n,) (so byte counts need no shard read)
      columns/<c>.npy   optional extra per-sample columns (numeric, bool or fixed-width unicode; no pickles)
      shards/00000/     one LMDB environment per shard (``subdir=True``: a ``data.mdb`` and nothing else)

Keys are the global sample index as 8-byte big-endian unsigned integers (so byte order equals numeric order);
shard ``s`` holds the contiguous index range ``[first_index, first_index + count)``. Values are the sample's
stored bytes: for the ``raw`` codec the C-order bytes of an ndarray of the manifest's ``dtype`` and ``shape``;
for ``png``/``jpeg`` the encoded file's bytes as found; for ``bytes`` opaque binary values (e.g. a Parquet
binary column that is not an image).

Checksums. A shard's ``sha256`` covers its *logical content*, not the ``data.mdb`` file: the SHA-256 of the
concatenation, over its records in ascending key order, of ``key (8 bytes) || uint64-BE(len(value)) || value``.
LMDB's file layout is not canonical: page allocation and free pages differ between two writes of the same
records, ``mdb_copy -c`` compacts, and with ``meminit=False`` (used for speed) the unused part of each page holds
whatever the writer's heap held, so even two identical ingests give different ``data.mdb`` bytes. A file hash
would be unreproducible and reject sound copies; the logical hash checks exactly what readers get, including the
keys and every value's length. ``bytes`` is the sum of the
shard's value lengths (the payload, not the file size). ``labels.npy``, ``sizes.npy`` and every column file are
covered by the SHA-256 of the file itself (``files``).

Per-sample checksums (:mod:`nessa.store.checksum`): ``"sample_checksum": "xxh3_64"`` names the algorithm of
``checksums.npy`` (one 64-bit hash per sample, listed in ``files``), which every read checks. A manifest without
the key (written before checksums existed) is still version 1: it opens, its reads are not verified, and
``nessa verify --add-checksums`` adds them.

The format version is :data:`FORMAT_VERSION`; a manifest of another version is refused with
:class:`~nessa.errors.FailedPreconditionError` (upgrade nessa, or re-ingest), a malformed one with
:class:`~nessa.errors.DataCorruptionError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nessa.errors import DataCorruptionError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from nessa.store.checksum import ALGORITHMS, CHECKSUMS_FILE

__all__ = [
    "CODEC_KINDS",
    "ENCODED_KINDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KEY_BYTES",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "SIZES_FILE",
    "Codec",
    "ColumnInfo",
    "Manifest",
    "ShardInfo",
    "decode_key",
    "encode_key",
    "encode_keys",
    "shard_counts",
    "shard_dir_name",
]

FORMAT_NAME = "nessa-dataset"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.npy"
SIZES_FILE = "sizes.npy"
KEY_BYTES = 8
#: ``raw``: ndarray bytes; ``png``/``jpeg``: encoded image files; ``bytes``: opaque binary values.
CODEC_KINDS = ("raw", "png", "jpeg", "bytes")
ENCODED_KINDS = ("png", "jpeg", "bytes")
_KEY_DTYPE = np.dtype(">u8")


def encode_key(index: int) -> bytes:
    """The LMDB key of global sample ``index``: 8 bytes, big-endian."""
    return int(index).to_bytes(KEY_BYTES, "big")


def encode_keys(indices: np.ndarray) -> list[bytes]:
    """The LMDB keys of many indices (non-negative integers), in the given order."""
    raw = np.asarray(indices).astype(_KEY_DTYPE, copy=False).tobytes()
    return [raw[i : i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]


def decode_key(key: bytes) -> int:
    """The global sample index stored in an LMDB key."""
    return int.from_bytes(key, "big")


def shard_dir_name(shard: int) -> str:
    """Relative path of shard number ``shard`` inside a dataset directory (``shards/00000``)."""
    return f"shards/{shard:05d}"


def shard_counts(num_samples: int, num_shards: int) -> list[int]:
    """Split ``num_samples`` into ``num_shards`` contiguous shards whose sizes differ by at most one.

    Raises:
        InvalidArgumentError: no samples, fewer than one shard, or more shards than samples.
    """
    if num_samples <= 0:
        raise InvalidArgumentError("the dataset is empty (0 samples); give a source with at least one sample")
    if num_shards < 1:
        raise InvalidArgumentError(f"shards must be >= 1; got {num_shards}")
    if num_shards > num_samples:
        raise InvalidArgumentError(
            f"{num_shards} shards for {num_samples} samples: every shard needs at least one sample; "
            f"use --shards {num_samples} or fewer"
        )
    base, extra = divmod(num_samples, num_shards)
    return [base + (1 if s < extra else 0) for s in range(num_shards)]


def _fail(path: Path | str, what: str) -> DataCorruptionError:
    return DataCorruptionError(f"{path}: {what}; the dataset is damaged: re-ingest it (or restore it from a copy)")


@dataclass(frozen=True)
class Codec:
    """How a sample's stored bytes are to be read.

    Attributes:
        kind: one of :data:`CODEC_KINDS`.
        dtype: numpy dtype string with byte order (``"<f4"``, ``"|u1"``) for ``raw``; ``None`` otherwise.
        shape: per-sample shape for ``raw`` (``()`` for scalars); ``None`` otherwise.
    """

    kind: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in CODEC_KINDS:
            raise InvalidArgumentError(f"unknown codec {self.kind!r}; known codecs: {', '.join(CODEC_KINDS)}")
        if self.kind == "raw":
            if self.dtype is None or self.shape is None:
                raise InvalidArgumentError("the raw codec needs a dtype and a per-sample shape")
            dt = np.dtype(self.dtype)
            if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
                raise InvalidArgumentError(
                    f"samples of dtype {dt} cannot be stored raw: use a numeric or bool dtype (no objects, strings "
                    "or structured dtypes)"
                )
            shape = tuple(int(d) for d in self.shape)
            if any(d < 0 for d in shape):
                raise InvalidArgumentError(f"per-sample shape {shape} has a negative dimension")
            object.__setattr__(self, "dtype", dt.str)
            object.__setattr__(self, "shape", shape)
        elif self.dtype is not None or self.shape is not None:
            raise InvalidArgumentError(f"the {self.kind} codec stores encoded bytes: it takes no dtype or shape")

    def __str__(self) -> str:
        return self.kind

    @classmethod
    def raw(cls, dtype: Any, shape: Sequence[int]) -> Codec:
        """A raw ndarray codec for samples of ``dtype`` and per-sample ``shape``."""
        return cls("raw", np.dtype(dtype).str, tuple(int(d) for d in shape))

    @property
    def is_raw(self) -> bool:
        """Whether values are ndarray bytes that :meth:`numpy_dtype` and ``shape`` decode."""
        return self.kind == "raw"

    @property
    def numpy_dtype(self) -> np.dtype | None:
        """The sample dtype for ``raw``; ``None`` for encoded codecs."""
        return np.dtype(self.dtype) if self.dtype is not None else None

    @property
    def sample_nbytes(self) -> int | None:
        """Bytes of one ``raw`` sample; ``None`` for encoded codecs (their sizes vary)."""
        if self.kind != "raw" or self.shape is None or self.dtype is None:
            return None
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def describe(self) -> str:
        """A short human description (``raw float32 (40,)``, ``png``)."""
        if self.kind == "raw":
            return f"raw {np.dtype(self.dtype)} {tuple(self.shape or ())}"
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        if self.kind == "raw":
            return {"kind": "raw", "dtype": self.dtype, "shape": list(self.shape or ())}
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, data: Any) -> Codec:
        """Parse the JSON form (raises :class:`InvalidArgumentError` when malformed)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str):
            raise InvalidArgumentError(f"codec must be an object with a 'kind'; got {data!r}")
        shape = data.get("shape")
        try:
            return cls(
                str(data["kind"]),
                data.get("dtype"),
                None if shape is None else tuple(int(d) for d in shape),
            )
        except TypeError as exc:
            raise InvalidArgumentError(f"malformed codec {data!r}: {exc}") from exc


@dataclass(frozen=True)
class ShardInfo:
    """One row of the shard table.

    Attributes:
        path: the shard's directory, relative to the dataset directory (``shards/00000``).
        first_index: global index of its first sample.
        count: number of samples (keys ``first_index .. first_index + count - 1``).
        bytes: sum of its value lengths.
        sha256: hex SHA-256 of its logical content (see the module docstring).
    """

    path: str
    first_index: int
    count: int
    bytes: int
    sha256: str

    @property
    def stop_index(self) -> int:
        """One past the global index of its last sample."""
        return self.first_index + self.count

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "path": self.path,
            "first_index": self.first_index,
            "count": self.count,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class ColumnInfo:
    """An extra per-sample column stored as ``.npy``.

    Attributes:
        name: column name.
        file: path relative to the dataset directory (``columns/<name>.npy``).
        dtype: numpy dtype string.
        shape: per-sample shape (``()`` for one value per sample).
    """

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "file": self.file, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` says about a dataset.

    Attributes:
        name: the dataset's name (by default its directory name at ingest).
        num_samples: number of samples.
        codec: how values decode.
        class_names: one name per class; labels lie in ``[0, len(class_names))``.
        shards: the shard table, in index order, covering ``[0, num_samples)`` contiguously.
        files: relative path → hex SHA-256 for ``labels.npy``, ``sizes.npy`` and the column files.
        columns: extra per-sample columns.
        ingest_id: random id of the ingest run that wrote it (changes on every re-ingest).
        created: UTC time of the ingest, ISO 8601.
        source: where the samples came from (free-form, for people).
        format_version: :data:`FORMAT_VERSION` for manifests this code writes.
        sample_checksum: algorithm of ``checksums.npy`` (``"xxh3_64"``), or ``""`` for a dataset without per-sample
            checksums (written by an older nessa).
    """

    name: str
    num_samples: int
    codec: Codec
    class_names: tuple[str, ...]
    shards: tuple[ShardInfo, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    columns: tuple[ColumnInfo, ...] = ()
    ingest_id: str = ""
    created: str = ""
    source: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    sample_checksum: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def total_bytes(self) -> int:
        """Sum of every stored value's length."""
        return sum(s.bytes for s in self.shards)

    def column(self, name: str) -> ColumnInfo:
        """The extra column called ``name`` (raises :class:`NotFoundError` if there is none)."""
        for col in self.columns:
            if col.name == name:
                return col
        known = ", ".join(c.name for c in self.columns) or "none"
        raise NotFoundError(f"dataset {self.name!r} has no column {name!r}; its columns: {known}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what ``manifest.json`` holds)."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "name": self.name,
            "num_samples": self.num_samples,
            "codec": self.codec.to_dict(),
            "class_names": list(self.class_names),
            "columns": [c.to_dict() for c in self.columns],
            "files": dict(self.files),
            "shards": [s.to_dict() for s in self.shards],
            "ingest_id": self.ingest_id,
            "created": self.created,
            "source": dict(self.source),
            **({"sample_checksum": self.sample_checksum} if self.sample_checksum else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, where: Path | str = MANIFEST_FILE) -> Manifest:
        """Parse and check the JSON form.

        Args:
            data: the decoded JSON.
            where: the file it came from, for messages.

        Raises:
            FailedPreconditionError: a format version this code does not read.
            DataCorruptionError: anything malformed or inconsistent (shards not covering the samples, ...).
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT_NAME:
            raise _fail(where, f'not a {FORMAT_NAME} manifest (no "format": "{FORMAT_NAME}")')
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise FailedPreconditionError(
                f"{where}: dataset format version {version!r} is not supported by this nessa (it reads version "
                f"{FORMAT_VERSION}); use the nessa release that wrote it, or re-ingest the dataset"
            )
        try:
            codec = Codec.from_dict(data["codec"])
            shards = tuple(
                ShardInfo(
                    path=str(s["path"]),
                    first_index=int(s["first_index"]),
                    count=int(s["count"]),
                    bytes=int(s["bytes"]),
                    sha256=str(s["sha256"]),
                )
                for s in data["shards"]
            )
            columns = tuple(
                ColumnInfo(
                    name=str(c["name"]),
                    file=str(c["file"]),
                    dtype=str(c["dtype"]),
                    shape=tuple(int(d) for d in c.get("shape", ())),
                )
                for c in data.get("columns", ())
            )
            manifest = cls(
                name=str(data["name"]),
                num_samples=int(data["num_samples"]),
                codec=codec,
                class_names=tuple(str(c) for c in data["class_names"]),
                shards=shards,
                files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
                columns=columns,
                ingest_id=str(data.get("ingest_id", "")),
                created=str(data.get("created", "")),
                source=dict(data.get("source", {})),
                format_version=int(version),
                sample_checksum=str(data.get("sample_checksum", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(where, f"malformed manifest ({type(exc).__name__}: {exc})") from exc
        manifest.check(where)
        return manifest

    def check(self, where: Path | str = MANIFEST_FILE) -> None:
        """Raise :class:`DataCorruptionError` unless the shard table covers ``[0, num_samples)`` contiguously."""
        if self.num_samples <= 0:
            raise _fail(where, f"num_samples is {self.num_samples}")
        if not self.shards:
            raise _fail(where, "the shard table is empty")
        if not self.class_names:
            raise _fail(where, "class_names is empty")
        expect = 0
        for s in self.shards:
            if s.first_index != expect or s.count <= 0:
                raise _fail(
                    where,
                    f"shard {s.path} covers [{s.first_index}, {s.stop_index}) but the next index expected is {expect}",
                )
            if s.bytes < 0 or len(s.sha256) != 64:
                raise _fail(where, f"shard {s.path} has a malformed byte count or sha256")
            if Path(s.path).is_absolute() or ".." in Path(s.path).parts:
                raise _fail(where, f"shard path {s.path!r} must be relative and inside the dataset")
            expect = s.stop_index
        if expect != self.num_samples:
            raise _fail(where, f"the shards hold {expect} samples but num_samples is {self.num_samples}")
        if self.sample_checksum:
            if self.sample_checksum not in ALGORITHMS:
                raise FailedPreconditionError(
                    f"{where}: per-sample checksum {self.sample_checksum!r} is not known to this nessa (it knows "
                    f"{', '.join(ALGORITHMS)}); use the nessa release that wrote the dataset"
                )
            if CHECKSUMS_FILE not in self.files:
                raise _fail(where, f"sample_checksum is set but {CHECKSUMS_FILE} is not listed in files")

    @classmethod
    def load(cls, dataset_dir: Path | str) -> Manifest:
        """Read ``<dataset_dir>/manifest.json``.

        Raises:
            NotFoundError: there is no such directory or no manifest in it.
            FailedPreconditionError: an unsupported format version.
            DataCorruptionError: the manifest is unreadable or inconsistent.
        """
        root = Path(dataset_dir)
        path = root / MANIFEST_FILE
        if not root.is_dir():
            raise NotFoundError(f"no dataset at {root}: the directory does not exist; ingest one with `nessa ingest`")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFoundError(
                f"{root} is not a dataset: it has no {MANIFEST_FILE} (an ingest into it never completed, or it is "
                "not a nessa dataset); ingest it with `nessa ingest`"
            ) from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _fail(path, f"not valid JSON ({exc})") from exc
        return cls.from_dict(data, path)

    def save(self, dataset_dir: Path | str) -> Path:
        """Write ``manifest.json`` into ``dataset_dir`` and fsync it; returns its path."""
        path = Path(dataset_dir) / MANIFEST_FILE
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return path
