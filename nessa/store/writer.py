"""Writing datasets: LMDB shards, labels, sizes and manifest, and the Python forms of ``nessa ingest``.

:func:`write_dataset` writes one dataset directory from a :class:`Split` (labels, codec, and an iterable of sample
values in index order). :func:`ingest_splits` writes one or more splits (``DEST`` and ``DEST-test``) into a
staging directory and publishes them all or nothing (see :mod:`nessa.store.atomic`). :func:`ingest_arrays` and
:func:`ingest_encoded` are the convenient forms for arrays and for encoded image bytes.

LMDB shards are written with ``subdir=True, lock=False`` (the staging directory is ours alone),
``meminit=False``, without per-commit fsync, committing every few thousand samples or 32 MiB with
``Cursor.putmulti(append=True)`` (keys arrive in ascending order). The map starts at an estimate of the shard's
size and doubles on ``MapFullError``. Each shard is fsynced when complete, the manifest written last. Every value's
checksum (:mod:`nessa.store.checksum`) is taken as it is written and saved as ``checksums.npy``.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from tqdm import tqdm

from nessa.errors import InvalidArgumentError
from nessa.store.atomic import Staging
from nessa.store.checksum import ALGORITHM, CHECKSUM_DTYPE, CHECKSUMS_FILE, checksum
from nessa.store.manifest import (
    LABELS_FILE,
    SIZES_FILE,
    Codec,
    ColumnInfo,
    Manifest,
    ShardInfo,
    encode_key,
    shard_counts,
    shard_dir_name,
)

__all__ = [
    "TEST_SUFFIX",
    "Split",
    "array_split",
    "check_class_names",
    "check_labels",
    "encoded_split",
    "ingest_arrays",
    "ingest_encoded",
    "ingest_splits",
    "shard_hasher",
    "write_dataset",
]

#: Suffix of the companion dataset holding a source's test split (``DEST-test``).
TEST_SUFFIX = "-test"
_BATCH_SAMPLES = 4096
_BATCH_BYTES = 32 << 20
_MIN_MAP_SIZE = 16 << 20
_PAGE = 4096

Buffer = bytes | bytearray | memoryview


@dataclass
class Split:
    """One dataset to write.

    Attributes:
        labels: int64 label per sample, shape (n,).
        codec: how the values decode.
        values: yields exactly ``n`` sample values (bytes-like) in index order; consumed once.
        class_names: one name per class (``None``: ``"0"``, ``"1"``, ... up to the largest label).
        columns: extra per-sample columns, name → array with ``n`` rows.
        source: where the samples came from, recorded in the manifest.
        suffix: appended to the destination's name (``""`` for the main dataset, :data:`TEST_SUFFIX`).
    """

    labels: np.ndarray
    codec: Codec
    values: Iterable[Buffer]
    class_names: Sequence[str] | None = None
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    suffix: str = ""

    def __len__(self) -> int:
        return len(self.labels)


def check_labels(y: Any, what: str = "labels") -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of non-negative class ids, or raise :class:`InvalidArgumentError`.

    Integer dtypes and bools are accepted; floats only when every value is a whole number.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{what} must be 1-D (one class id per sample); got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))][:3]
            raise InvalidArgumentError(
                f"{what} must be integer class ids; got non-integer values such as {bad.tolist()} "
                "(map each class to 0, 1, 2, ... and give the names as class names)"
            )
        out = arr.astype(np.int64)
    else:
        raise InvalidArgumentError(
            f"{what} must be integer class ids; got dtype {arr.dtype} (map each class to 0, 1, 2, ... and give the "
            "names as class names)"
        )
    if out.size and out.min() < 0:
        raise InvalidArgumentError(f"{what} must be >= 0; got {int(out.min())} (class ids are 0, 1, 2, ...)")
    return out


def check_class_names(labels: np.ndarray, class_names: Sequence[str] | None) -> tuple[str, ...]:
    """The class names for ``labels``: the given ones (checked to cover every label) or ``"0"``..``"k-1"``."""
    top = int(labels.max()) + 1 if labels.size else 0
    if class_names is None:
        return tuple(str(i) for i in range(max(top, 1)))
    names = tuple(str(c) for c in class_names)
    if len(names) < top:
        raise InvalidArgumentError(
            f"{len(names)} class names but labels go up to {top - 1}; give one name per class (at least {top})"
        )
    if not names:
        raise InvalidArgumentError("class names must not be empty")
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"class names must be distinct; got {list(names)}")
    return names


def _check_columns(columns: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    out = {}
    for name, value in columns.items():
        if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
            raise InvalidArgumentError(f"column name {name!r} must be letters, digits, '_', '-' or '.'")
        arr = np.asarray(value)
        if arr.ndim < 1 or len(arr) != n:
            rows = len(arr) if arr.ndim else 0
            raise InvalidArgumentError(f"column {name!r} has {rows} rows; give one per sample ({n})")
        if arr.dtype.kind not in "biufcUS":
            raise InvalidArgumentError(
                f"column {name!r} has dtype {arr.dtype}; columns must be numeric, bool or fixed-width strings"
            )
        out[name] = np.ascontiguousarray(arr)
    return out


def array_split(
    x: Any,
    y: Any,
    *,
    class_names: Sequence[str] | None = None,
    columns: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    suffix: str = "",
    sample_shape: Sequence[int] | None = None,
    what: str = "x",
) -> Split:
    """A :class:`Split` of raw ndarray samples: ``x[i]`` (C-order bytes) labelled ``y[i]``.

    Args:
        x: samples, shape (n, ...), numeric or bool.
        y: labels, shape (n,).
        class_names: one per class (default ``"0"``, ``"1"``, ...).
        columns: extra per-sample columns.
        source: provenance for the manifest.
        suffix: dataset name suffix (``""`` or :data:`TEST_SUFFIX`).
        sample_shape: store each sample with this shape instead of ``x.shape[1:]`` (same number of elements).
        what: the name of ``x`` in error messages.

    Raises:
        InvalidArgumentError: mismatched lengths, a dtype that cannot be stored raw, non-integer labels, a bad
            ``sample_shape``, or no samples.
    """
    arr = np.asarray(x)
    if arr.ndim < 1:
        raise InvalidArgumentError(f"{what} must be an array with one row per sample; got a scalar")
    labels = check_labels(y, "labels" if what == "x" else f"labels of {what}")
    if len(arr) != len(labels):
        raise InvalidArgumentError(
            f"{what} has {len(arr)} samples but its labels have {len(labels)}; give one label per sample"
        )
    if len(arr) == 0:
        raise InvalidArgumentError(f"{what} is empty (0 samples); give at least one sample")
    shape = tuple(arr.shape[1:])
    if sample_shape is not None:
        want = tuple(int(d) for d in sample_shape)
        if math.prod(want) != math.prod(shape):
            raise InvalidArgumentError(
                f"sample shape {want} has {math.prod(want)} elements but each sample of {what} has "
                f"{math.prod(shape)} (shape {shape})"
            )
        shape = want
    if arr.dtype.kind not in "biufc":
        raise InvalidArgumentError(
            f"{what} has dtype {arr.dtype}; samples stored raw must be numeric or bool (encode images as png/jpeg "
            "bytes and use the image codecs instead)"
        )
    codec = Codec.raw(arr.dtype, shape)
    arr = np.ascontiguousarray(arr)
    flat = arr.reshape(len(arr), -1) if arr.size else arr.reshape(len(arr), 0)

    def values() -> Iterator[Buffer]:
        for i in range(len(flat)):
            yield flat[i].data

    return Split(
        labels=labels,
        codec=codec,
        values=values(),
        class_names=check_class_names(labels, class_names),
        columns=_check_columns(columns or {}, len(labels)),
        source=dict(source or {"kind": "arrays"}),
        suffix=suffix,
    )


def encoded_split(
    values: Sequence[Buffer] | Iterable[Buffer],
    y: Any,
    *,
    codec: str,
    class_names: Sequence[str] | None = None,
    columns: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    suffix: str = "",
) -> Split:
    """A :class:`Split` of encoded samples (``png``, ``jpeg`` or opaque ``bytes``), one value per label.

    ``values`` may be a lazy iterable (e.g. files read one at a time); it must yield exactly ``len(y)`` values.
    """
    if codec == "raw":
        raise InvalidArgumentError("encoded_split takes encoded bytes; use array_split for raw arrays")
    labels = check_labels(y)
    if len(labels) == 0:
        raise InvalidArgumentError("the dataset is empty (0 samples); give at least one sample")
    if isinstance(values, Sequence) and len(values) != len(labels):
        raise InvalidArgumentError(f"{len(values)} samples but {len(labels)} labels; give one label per sample")
    return Split(
        labels=labels,
        codec=Codec(codec),
        values=iter(values),
        class_names=check_class_names(labels, class_names),
        columns=_check_columns(columns or {}, len(labels)),
        source=dict(source or {"kind": "encoded"}),
        suffix=suffix,
    )


def shard_hasher() -> Any:
    """A fresh hash object for a shard's logical content (see :mod:`nessa.store.manifest`)."""
    return hashlib.sha256()


def _estimate_map_size(codec: Codec, count: int) -> int:
    nbytes = codec.sample_nbytes
    if nbytes is None:
        return 64 << 20
    if nbytes + 16 > _PAGE // 2:
        per = math.ceil((nbytes + 16) / _PAGE) * _PAGE + 32
    else:
        per = 2 * (nbytes + 24)
    return max(_MIN_MAP_SIZE, int(count * per * 1.25) + (4 << 20))


def _put_batch(env: lmdb.Environment, batch: list[tuple[bytes, Buffer]]) -> bool:
    """Commit ``batch`` in one write transaction; False (nothing committed) if the map is full."""
    try:
        with env.begin(write=True) as txn:
            _consumed, added = txn.cursor().putmulti(batch, append=True)
    except lmdb.MapFullError:
        return False
    if added != len(batch):
        raise InvalidArgumentError(f"LMDB stored {added} of {len(batch)} samples (duplicate keys?)")
    return True


def _commit(env: lmdb.Environment, batch: list[tuple[bytes, Buffer]]) -> None:
    while not _put_batch(env, batch):
        env.set_mapsize(int(env.info()["map_size"]) * 2)


def _write_shard(
    root: Path,
    rel: str,
    first: int,
    count: int,
    values: Iterator[Buffer],
    codec: Codec,
    sizes: np.ndarray,
    sums: np.ndarray,
    on_batch: Callable[[int], None],
    map_size: int | None,
) -> ShardInfo:
    shard_dir = root / rel
    shard_dir.mkdir(parents=True)
    env = lmdb.open(
        str(shard_dir),
        map_size=map_size or _estimate_map_size(codec, count),
        subdir=True,
        lock=False,
        meminit=False,
        sync=False,
        metasync=False,
        max_dbs=0,
        readahead=False,
    )
    want = codec.sample_nbytes
    digest = shard_hasher()
    total = 0
    try:
        batch: list[tuple[bytes, Buffer]] = []
        batch_bytes = 0
        for index in range(first, first + count):
            try:
                value = next(values)
            except StopIteration:
                raise InvalidArgumentError(
                    f"the source ended after {index} samples but has {len(sizes)} labels; give one sample per label"
                ) from None
            if not isinstance(value, bytes | bytearray | memoryview):
                raise InvalidArgumentError(f"sample {index} is a {type(value).__name__}; samples must be bytes-like")
            size = value.nbytes if isinstance(value, memoryview) else len(value)
            if want is not None and size != want:
                raise InvalidArgumentError(
                    f"sample {index} has {size} bytes but the codec ({codec.describe()}) needs {want}"
                )
            if want is None and size == 0:
                raise InvalidArgumentError(f"sample {index} is empty (0 bytes); every encoded sample needs its bytes")
            key = encode_key(index)
            digest.update(key)
            digest.update(size.to_bytes(8, "big"))
            digest.update(value)
            sizes[index] = size
            sums[index] = checksum(value)
            total += size
            batch.append((key, value))
            batch_bytes += size
            if len(batch) >= _BATCH_SAMPLES or batch_bytes >= _BATCH_BYTES:
                _commit(env, batch)
                on_batch(len(batch))
                batch, batch_bytes = [], 0
        if batch:
            _commit(env, batch)
            on_batch(len(batch))
        env.sync(True)
    finally:
        env.close()
    return ShardInfo(
        path=rel,
        first_index=first,
        count=count,
        bytes=total,
        sha256=digest.hexdigest(),
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def write_dataset(
    directory: Path | str,
    split: Split,
    *,
    name: str,
    num_shards: int = 1,
    ingest_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    map_size: int | None = None,
) -> Manifest:
    """Write one dataset directory (which must not exist) from ``split``; the manifest is written last.

    This does not publish anything atomically: use :func:`ingest_splits` (or the ``ingest_*`` helpers) to write
    into a staging directory and move the result into place.

    Args:
        directory: the dataset directory to create.
        split: labels, codec and values.
        name: the dataset's name in the manifest.
        num_shards: number of LMDB shards (contiguous index ranges of near-equal size).
        ingest_id: recorded in the manifest (default: a new random id).
        progress: called with the number of samples after each committed batch.
        map_size: initial LMDB map size in bytes (default: estimated; grown on ``MapFullError`` either way).

    Returns:
        The manifest written.

    Raises:
        InvalidArgumentError: the split's values do not match its labels or codec, or bad shard count.
    """
    root = Path(directory)
    labels = check_labels(split.labels)
    n = len(labels)
    counts = shard_counts(n, num_shards)
    class_names = check_class_names(labels, split.class_names)
    columns = _check_columns(split.columns, n)
    root.mkdir(parents=False)
    sizes = np.zeros(n, dtype="<i8")
    sums = np.zeros(n, dtype=CHECKSUM_DTYPE)
    values = iter(split.values)
    tick = progress or (lambda _k: None)
    shards = []
    first = 0
    for s, count in enumerate(counts):
        rel = shard_dir_name(s)
        shards.append(_write_shard(root, rel, first, count, values, split.codec, sizes, sums, tick, map_size))
        first += count
    extra = next(values, None)
    if extra is not None:
        raise InvalidArgumentError(f"the source has more samples than its {n} labels; give one label per sample")
    files = {}
    _save_npy(root / LABELS_FILE, labels.astype("<i8"))
    files[LABELS_FILE] = _file_sha256(root / LABELS_FILE)
    _save_npy(root / SIZES_FILE, sizes)
    files[SIZES_FILE] = _file_sha256(root / SIZES_FILE)
    _save_npy(root / CHECKSUMS_FILE, sums)
    files[CHECKSUMS_FILE] = _file_sha256(root / CHECKSUMS_FILE)
    column_infos = []
    for col_name, arr in columns.items():
        rel = f"columns/{col_name}.npy"
        _save_npy(root / rel, arr)
        files[rel] = _file_sha256(root / rel)
        column_infos.append(ColumnInfo(col_name, rel, arr.dtype.str, tuple(arr.shape[1:])))
    manifest = Manifest(
        name=name,
        num_samples=n,
        codec=split.codec,
        class_names=class_names,
        shards=tuple(shards),
        files=files,
        columns=tuple(column_infos),
        ingest_id=ingest_id or uuid.uuid4().hex,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=dict(split.source),
        sample_checksum=ALGORITHM,
    )
    manifest.check(root)
    manifest.save(root)
    return manifest


def ingest_splits(
    splits: Sequence[Split],
    dest: Path | str,
    *,
    shards: int = 1,
    overwrite: bool = False,
    quiet: bool = True,
    map_size: int | None = None,
) -> list[Path]:
    """Write ``splits`` as ``dest`` + each split's suffix, all published together or not at all.

    Args:
        splits: the datasets to write; suffixes must be distinct (``""`` for ``dest`` itself).
        dest: the main dataset's directory.
        shards: LMDB shards per dataset (each split needs at least that many samples).
        overwrite: atomically replace existing datasets instead of refusing.
        quiet: no progress bar (otherwise a tqdm bar on stderr for runs over a second).
        map_size: initial LMDB map size per shard (default: estimated).

    Returns:
        The published dataset directories, in ``splits`` order.

    Raises:
        InvalidArgumentError: bad inputs (checked before anything is written where possible).
        FailedPreconditionError: a destination exists (without ``overwrite``) or is not a nessa dataset.
    """
    if not splits:
        raise InvalidArgumentError("nothing to ingest: no splits given")
    for split in splits:
        shard_counts(len(split.labels), shards)  # fail before writing anything
    dest_path = Path(os.path.abspath(dest))
    ingest_id = uuid.uuid4().hex
    total = sum(len(s) for s in splits)
    with Staging(dest_path, [s.suffix for s in splits], overwrite=overwrite) as staging:
        with tqdm(
            total=total, unit="sample", desc=f"ingest {dest_path.name}", disable=quiet, delay=1.0, mininterval=0.5
        ) as bar:
            for split in splits:
                write_dataset(
                    staging.path(split.suffix),
                    split,
                    name=dest_path.name + split.suffix,
                    num_shards=shards,
                    ingest_id=ingest_id,
                    progress=bar.update,
                    map_size=map_size,
                )
        return staging.publish(ingest_id)


def ingest_arrays(
    x: Any,
    y: Any,
    dest: Path | str,
    *,
    x_test: Any = None,
    y_test: Any = None,
    class_names: Sequence[str] | None = None,
    columns: Mapping[str, Any] | None = None,
    sample_shape: Sequence[int] | None = None,
    shards: int = 1,
    overwrite: bool = False,
    quiet: bool = True,
    source: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Ingest arrays as a dataset (and ``x_test``/``y_test`` as ``DEST-test``), atomically.

    Args:
        x: samples, shape (n, ...), numeric or bool; stored raw (C-order bytes of each ``x[i]``).
        y: integer labels, shape (n,).
        dest: the dataset directory to create.
        x_test: optional test samples, written as ``DEST-test`` (published together with ``DEST``).
        y_test: their labels (required with ``x_test``).
        class_names: one per class (default ``"0"``, ``"1"``, ...); shared by both splits.
        columns: extra per-sample columns of the main split.
        sample_shape: per-sample shape to record instead of ``x.shape[1:]``.
        shards: LMDB shards per dataset.
        overwrite: atomically replace existing datasets.
        quiet: no progress bar.
        source: provenance recorded in the manifest.

    Returns:
        ``[DEST]`` or ``[DEST, DEST-test]``.
    """
    if (x_test is None) != (y_test is None):
        raise InvalidArgumentError("give both x_test and y_test, or neither")
    labels = check_labels(y)
    names = class_names
    if names is None and y_test is not None:
        top = max(int(labels.max(initial=-1)), int(check_labels(y_test, "y_test").max(initial=-1))) + 1
        names = [str(i) for i in range(max(top, 1))]
    splits = [array_split(x, labels, class_names=names, columns=columns, source=source, sample_shape=sample_shape)]
    if x_test is not None:
        splits.append(
            array_split(
                x_test,
                y_test,
                class_names=names,
                source={**dict(source or {"kind": "arrays"}), "split": "test"},
                suffix=TEST_SUFFIX,
                sample_shape=sample_shape,
                what="x_test",
            )
        )
    return ingest_splits(splits, dest, shards=shards, overwrite=overwrite, quiet=quiet)


def ingest_encoded(
    values: Sequence[Buffer],
    y: Any,
    dest: Path | str,
    *,
    codec: str = "png",
    class_names: Sequence[str] | None = None,
    columns: Mapping[str, Any] | None = None,
    shards: int = 1,
    overwrite: bool = False,
    quiet: bool = True,
    source: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Ingest encoded samples (``png``/``jpeg`` file bytes, or opaque ``bytes``) as a dataset, atomically.

    Returns:
        ``[DEST]``.
    """
    split = encoded_split(values, y, codec=codec, class_names=class_names, columns=columns, source=source)
    return ingest_splits([split], dest, shards=shards, overwrite=overwrite, quiet=quiet)
