"""Reading datasets: :func:`open_dataset` and :class:`DatasetReader`.

Opening a dataset reads its manifest, ``labels.npy`` and ``sizes.npy`` and checks that every shard's directory
and ``data.mdb`` exist (a missing shard fails here, naming it). Shard environments are opened lazily, on first
read, read-only and unlocked, shared within the process and reopened after ``fork`` (see
:mod:`nessa.store.lmdbenv`); opening one also refuses a truncated ``data.mdb``.

:meth:`DatasetReader.read` groups the requested indices by shard and reads each shard's keys in one read
transaction with one sorted ``Cursor.getmulti`` pass; results come back in request order, duplicates allowed.
A key that is missing, or a value whose length differs from ``sizes.npy``, raises
:class:`~nessa.errors.DataCorruptionError` naming the shard: never a silent short read. Every value returned is
checked against its per-sample checksum (``checksums.npy``, see :mod:`nessa.store.checksum`): a mismatch raises
:class:`~nessa.store.checksum.SampleCorruptionError` naming the dataset, shard and index, and the read returns
nothing. A dataset written before checksums existed opens with a warning (``verified`` is False) and its reads are
not checked until ``nessa verify --add-checksums`` upgrades it. Messages name the dataset and the shard's relative
path, never the absolute path of the data directory. Reads are thread-safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

import nessa.store.checksum as _checksum
import nessa.store.lmdbenv as lmdbenv
from nessa.errors import DataCorruptionError, FailedPreconditionError, InvalidArgumentError, OutOfRangeError
from nessa.store.lmdbenv import DATA_FILE, DEFAULT_MAX_READERS
from nessa.store.manifest import LABELS_FILE, SIZES_FILE, Codec, Manifest, encode_keys

__all__ = ["DatasetReader", "open_dataset"]


class _ShardMap:
    """A shard's values located in LMDB's memory map: value ``i`` of the shard is ``view[offsets[i]:+size]``.

    Built by one cursor pass over the shard (read-only, no writer ever: the map does not move while ``env`` is
    open). ``view`` is a read-only view of the span of the map holding the values, valid while ``env`` stays open
    (the reader keeps it open until :meth:`DatasetReader.close`, and drops the map with it).
    """

    def __init__(self, env: Any, first_index: int, view: memoryview | None, offsets: np.ndarray) -> None:
        self.env = env
        self.first_index = first_index
        self.view = view
        self.offsets = offsets

    @property
    def usable(self) -> bool:
        return self.view is not None

    @classmethod
    def build(cls, env: Any, first_index: int, count: int, sizes: np.ndarray) -> _ShardMap:
        """Scan the shard and locate its values.

        Unusable (``view`` None) unless its keys are exactly the ``count`` its manifest says, each with its size from
        ``sizes.npy``: reads then take the LMDB path, which names what is wrong.
        """
        unusable = cls(env, first_index, None, np.zeros(0, np.int64))
        addresses: list[int] = []
        stop = min(first_index + count, len(sizes))
        with env.begin(buffers=True) as txn:
            expect = first_index
            for key, value in txn.cursor():
                if expect >= stop or int.from_bytes(key, "big") != expect or len(value) != sizes[expect]:
                    return unusable
                addresses.append(np.frombuffer(value, np.uint8).ctypes.data if len(value) else 0)
                expect += 1
        if not addresses or len(addresses) != count:
            return unusable
        addr = np.asarray(addresses, dtype=np.int64)
        n = sizes[first_index : first_index + len(addr)]
        nonempty = n > 0
        if not nonempty.any():
            return unusable
        lo = int(addr[nonempty].min())
        hi = int((addr + n)[nonempty].max())
        span = (ctypes.c_char * (hi - lo)).from_address(lo)
        offsets = np.where(nonempty, addr - lo, 0)
        return cls(env, first_index, memoryview(span).cast("B").toreadonly(), offsets)


def _damaged(dataset: str, rel: str, what: str) -> DataCorruptionError:
    """A corruption error naming the dataset and the relative path of what is damaged (never an absolute path)."""
    return DataCorruptionError(
        f"dataset {dataset!r}: {rel}: {what}; the dataset is damaged: run `nessa verify` on it and re-ingest it "
        "(or restore it from a copy)"
    )


def _load_vector(root: Path, dataset: str, name: str, n: int, kinds: str = "iu", dtype: Any = np.int64) -> np.ndarray:
    path = root / name
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise _damaged(dataset, name, "the file is missing") from None
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(dataset, name, f"unreadable ({type(exc).__name__})") from exc
    if arr.shape != (n,) or arr.dtype.kind not in kinds:
        raise _damaged(dataset, name, f"expected {n} integers, found shape {arr.shape} dtype {arr.dtype}")
    out = arr.astype(dtype, copy=False)
    out.setflags(write=False)
    return out


def _as_indices(indices: Any) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"indices must be 1-D; got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"indices must be integers; got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class DatasetReader:
    """Thread-safe, fork-aware read access to one stored dataset. Build it with :func:`open_dataset`.

    Attributes:
        path: the dataset directory.
        manifest: its manifest.
    """

    def __init__(self, path: Path | str, *, max_readers: int = DEFAULT_MAX_READERS) -> None:
        self.path = Path(path).absolute()
        self.manifest = Manifest.load(self.path)
        n = self.manifest.num_samples
        name = self.manifest.name
        self._labels = _load_vector(self.path, name, LABELS_FILE, n)
        self._sizes = _load_vector(self.path, name, SIZES_FILE, n)
        self._checksums: np.ndarray | None = None
        if self.manifest.sample_checksum:
            self._checksums = _load_vector(self.path, name, _checksum.CHECKSUMS_FILE, n, kinds="u", dtype=np.uint64)
        else:
            import logging

            logging.getLogger("nessa.store").warning(
                "dataset %r has no per-sample checksums (written by an older nessa): its reads are not verified; "
                "run `nessa verify --add-checksums` on it to add them",
                name,
            )
        if n and (int(self._labels.min()) < 0 or int(self._labels.max()) >= self.manifest.num_classes):
            raise _damaged(name, LABELS_FILE, f"labels outside [0, {self.manifest.num_classes})")
        for shard in self.manifest.shards:
            shard_dir = self.path / shard.path
            if not shard_dir.is_dir():
                raise _damaged(name, shard.path, "the shard directory is missing")
            if not (shard_dir / DATA_FILE).is_file():
                raise _damaged(name, shard.path, f"the shard's {DATA_FILE} is missing")
        self._starts = np.array([s.first_index for s in self.manifest.shards], dtype=np.int64)
        self._max_readers = max_readers
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._envs: list[tuple[tuple[int, int], lmdb.Environment] | None] = [None] * len(self.manifest.shards)
        self._maps: list[_ShardMap | None] = [None] * len(self.manifest.shards)
        self._closed = False

    # -- facts -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __repr__(self) -> str:
        m = self.manifest
        return f"DatasetReader({str(self.path)!r}, samples={m.num_samples}, codec={m.codec.describe()!r})"

    @property
    def name(self) -> str:
        """The dataset's name."""
        return self.manifest.name

    @property
    def verified(self) -> bool:
        """Whether reads are checked against per-sample checksums (False for datasets written before them)."""
        return self._checksums is not None

    @property
    def labels(self) -> np.ndarray:
        """int64 label per sample (read-only)."""
        return self._labels

    @property
    def sizes(self) -> np.ndarray:
        """int64 stored byte length per sample (read-only)."""
        return self._sizes

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.manifest.num_classes

    @property
    def class_names(self) -> list[str]:
        """One name per class."""
        return list(self.manifest.class_names)

    @property
    def codec(self) -> Codec:
        """How values decode."""
        return self.manifest.codec

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """Shape of one decoded sample for the raw codec; ``None`` for encoded images/bytes."""
        return self.manifest.codec.shape

    @property
    def dtype(self) -> np.dtype | None:
        """Dtype of a decoded sample for the raw codec; ``None`` for encoded images/bytes."""
        return self.manifest.codec.numpy_dtype

    @property
    def num_shards(self) -> int:
        """Number of LMDB shards."""
        return len(self.manifest.shards)

    @property
    def total_bytes(self) -> int:
        """Sum of every stored value's length."""
        return self.manifest.total_bytes

    def nbytes(self, indices: Sequence[int] | np.ndarray) -> int:
        """Stored bytes of the given samples (duplicates counted each time), from ``sizes.npy``: no shard read."""
        idx = self._check(indices)
        return int(self._sizes[idx].sum()) if idx.size else 0

    def shard_of(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Shard number of each index."""
        idx = self._check(indices)
        return np.searchsorted(self._starts, idx, side="right").astype(np.int64) - 1

    def column(self, name: str) -> np.ndarray:
        """The extra per-sample column ``name`` (memory-mapped, read-only)."""
        info = self.manifest.column(name)
        path = self.path / info.file
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _damaged(self.name, info.file, f"column {name!r} is unreadable ({type(exc).__name__})") from exc
        if len(arr) != len(self):
            raise _damaged(self.name, info.file, f"column {name!r} has {len(arr)} rows, the dataset {len(self)}")
        return arr

    # -- reading -----------------------------------------------------------------------------------------------

    def _check(self, indices: Any) -> np.ndarray:
        idx = _as_indices(indices)
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            n = len(self)
            if lo < 0 or hi >= n:
                bad = lo if lo < 0 else hi
                raise OutOfRangeError(
                    f"index {bad} is out of range for dataset {self.name!r} with {n} samples (valid: 0..{n - 1})"
                )
        return idx

    def _env(self, shard: int) -> lmdb.Environment:
        if self._closed:
            raise FailedPreconditionError(f"dataset reader for {self.name!r} is closed; open the dataset again")
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's environments are not ours to use or release
                self._envs = [None] * len(self._envs)
                self._maps = [None] * len(self._maps)
                self._pid = os.getpid()
            held = self._envs[shard]
            if held is None:
                rel = self.manifest.shards[shard].path
                try:
                    held = lmdbenv.acquire(self.path / rel, self._max_readers)
                except lmdbenv.ShardCorruptionError as exc:
                    raise _damaged(self.name, rel, exc.what) from exc
                self._envs[shard] = held
            return held[1]

    def read(self, indices: Sequence[int] | np.ndarray) -> list[bytes]:
        """The stored bytes of each index, in the order given (duplicates allowed).

        One read transaction per shard touched; keys are fetched in sorted order with ``Cursor.getmulti``.

        Raises:
            OutOfRangeError: an index outside ``[0, len(self))``.
            InvalidArgumentError: indices that are not 1-D integers.
            DataCorruptionError: a missing key, a value of the wrong length, or (``SampleCorruptionError``) a value
                that does not match its checksum; the message names the dataset, the shard and the index.
        """
        idx = self._check(indices)
        with contextlib.ExitStack() as txns:
            return self._values(idx, txns, buffers=False)

    def read_joined(self, indices: Sequence[int] | np.ndarray, prefix: bytes = b"") -> bytes:
        """``prefix`` and then the stored bytes of each index back to back, in the order given, as one ``bytes``.

        The values are read as views of the LMDB memory map, checked like :meth:`read`, and copied once, by the join.
        A stream message is built this way: its head (which needs only the sizes, known from ``sizes.npy``) is the
        prefix. For a dataset with per-sample checksums, the first read of a shard locates every value of the shard
        in the map (one cursor pass, about 2 s per million samples here; 8 bytes per sample kept), and later reads
        slice the map without an LMDB lookup (each value still checked against its checksum); otherwise the values
        come from ``Cursor.getmulti`` with ``buffers=True`` inside the read transactions.

        Raises:
            The errors of :meth:`read`.
        """
        idx = self._check(indices)
        if self._checksums is not None and idx.size:
            values = self._mapped_values(idx)
            if values is not None:
                return b"".join([prefix, *values])
        with contextlib.ExitStack() as txns:
            values = self._values(idx, txns, buffers=True)
            return b"".join([prefix, *values]) if values else bytes(prefix)

    def _shard_map(self, shard: int) -> _ShardMap | None:
        """Where each value of ``shard`` lies in LMDB's memory map (built once per process; ``None``: not usable)."""
        env = self._env(shard)
        with self._lock:
            held = self._maps[shard]
            if held is not None and held.env is env:
                return held if held.usable else None
        info = self.manifest.shards[shard]
        built = _ShardMap.build(env, info.first_index, info.count, self._sizes)
        with self._lock:
            if self._envs[shard] is not None and self._envs[shard][1] is env:  # type: ignore[index]
                self._maps[shard] = built
        return built if built.usable else None

    def _mapped_values(self, idx: np.ndarray) -> list[memoryview] | None:
        """The checked values of ``idx`` as views of the LMDB maps (no lookup), or ``None`` to take the LMDB path.

        Only for datasets with per-sample checksums: every view is checked against its checksum, so a view that were
        ever wrong would be a :class:`SampleCorruptionError`, never wrong data.
        """
        shard_ids = np.searchsorted(self._starts, idx, side="right") - 1
        first, last = int(shard_ids.min()), int(shard_ids.max())
        maps = [self._shard_map(sh) for sh in range(first, last + 1)]
        if any(m is None for m in maps):
            return None
        sizes = self._sizes[idx].tolist()
        if first == last:
            m = maps[0]
            assert m is not None and m.view is not None
            starts = m.offsets[idx - m.first_index].tolist()
            view = m.view
            values = [view[a : a + n] for a, n in zip(starts, sizes, strict=True)]
        else:
            starts = np.empty(len(idx), dtype=np.int64)
            views = []
            for m in maps:
                assert m is not None and m.view is not None
                views.append(m.view)
                local = (idx >= m.first_index) & (idx < m.first_index + len(m.offsets))
                starts[local] = m.offsets[idx[local] - m.first_index]
            which = (shard_ids - first).tolist()
            values = [views[w][a : a + n] for w, a, n in zip(which, starts.tolist(), sizes, strict=True)]
        sums = _checksum.checksums(values, len(values))
        checksums = self._checksums
        assert checksums is not None
        want = checksums[idx]
        if not np.array_equal(sums, want):
            bad = np.flatnonzero(sums != want)
            shard = int(shard_ids[bad[0]])
            raise _checksum.SampleCorruptionError(
                self.name, shard, [int(i) for i in np.unique(idx[bad][shard_ids[bad] == shard])]
            )
        return values

    def _values(self, idx: np.ndarray, txns: contextlib.ExitStack, buffers: bool) -> list[Any]:
        """The checked values of ``idx`` in order; with ``buffers``, views valid while ``txns`` stays open."""
        out: list[Any] = [b""] * len(idx)
        if not idx.size:
            return out
        shard_ids = np.searchsorted(self._starts, idx, side="right") - 1
        order = np.argsort(shard_ids, kind="stable")
        bounds = np.flatnonzero(np.diff(shard_ids[order])) + 1
        for group in np.split(order, bounds):
            shard = int(shard_ids[group[0]])
            wanted = idx[group]
            unique, inverse = np.unique(wanted, return_inverse=True)
            env = self._env(shard)
            txn: Any = txns.enter_context(env.begin(buffers=True) if buffers else env.begin(buffers=False))
            found = txn.cursor().getmulti(encode_keys(unique))
            if len(found) != len(unique):
                self._missing(shard, unique, found)
            values = [v for _k, v in found]
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            expect = self._sizes[unique]
            if not np.array_equal(lengths, expect):
                j = int(np.flatnonzero(lengths != expect)[0])
                raise _damaged(
                    self.name,
                    self.manifest.shards[shard].path,
                    f"sample {int(unique[j])} has {int(lengths[j])} bytes, sizes.npy says {int(expect[j])}",
                )
            if self._checksums is not None:
                sums = _checksum.checksums(values, len(values))
                want = self._checksums[unique]
                if not np.array_equal(sums, want):
                    bad = unique[np.flatnonzero(sums != want)]
                    raise _checksum.SampleCorruptionError(self.name, shard, [int(i) for i in bad])
            if len(group) == len(idx) and len(unique) == len(idx):  # one shard, no duplicates: order by inverse
                out = [values[k] for k in inverse.tolist()]
            else:
                for pos, k in zip(group.tolist(), inverse.tolist(), strict=True):
                    out[pos] = values[k]
        return out

    def _missing(self, shard: int, unique: np.ndarray, found: list[tuple[Any, Any]]) -> None:
        have = {int.from_bytes(k, "big") for k, _v in found}
        gone = [int(i) for i in unique if int(i) not in have]
        raise _damaged(
            self.name,
            self.manifest.shards[shard].path,
            f"{len(gone)} sample(s) missing from the shard (e.g. index {gone[0]})",
        )

    def decode(self, value: bytes | bytearray | memoryview) -> np.ndarray:
        """Decode one stored value of a raw-codec dataset into an ndarray of ``sample_shape`` and ``dtype``.

        The array is a read-only view of ``value`` (no copy).

        Raises:
            FailedPreconditionError: the dataset stores encoded images or opaque bytes (decode those with an image
                library, e.g. ``PIL.Image.open(io.BytesIO(value))``).
            InvalidArgumentError: ``value`` has the wrong length.
        """
        codec = self.manifest.codec
        if not codec.is_raw or codec.shape is None:
            raise FailedPreconditionError(
                f"dataset {self.name!r} stores {codec.kind} bytes, which nessa does not decode; decode them with an "
                "image library (e.g. PIL.Image.open(io.BytesIO(value))) or use the bytes as they are"
            )
        want = codec.sample_nbytes
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        if size != want:
            raise InvalidArgumentError(f"a {codec.describe()} sample has {want} bytes; got {size}")
        return np.frombuffer(value, dtype=codec.numpy_dtype).reshape(codec.shape)

    def read_arrays(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Read and decode a batch: shape ``(len(indices), *sample_shape)`` (raw codec only)."""
        codec = self.manifest.codec
        if not codec.is_raw or codec.shape is None:
            self.decode(b"")  # raises the encoded-codec error
        values = self.read(indices)
        shape = (len(values), *(codec.shape or ()))
        if not values:
            return np.zeros(shape, dtype=codec.numpy_dtype)
        return np.frombuffer(b"".join(values), dtype=codec.numpy_dtype).reshape(shape)

    # -- lifetime ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release this reader's shard environments (closed when no other reader in the process holds them)."""
        with self._lock:
            if self._pid == os.getpid():
                for held in self._envs:
                    if held is not None:
                        lmdbenv.release(held[0])
            self._envs = [None] * len(self._envs)
            self._maps = [None] * len(self._maps)
            self._closed = True

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "max_readers": self._max_readers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], max_readers=state["max_readers"])  # type: ignore[misc]


def open_dataset(path: Path | str, *, max_readers: int = DEFAULT_MAX_READERS) -> DatasetReader:
    """Open a stored dataset for reading.

    Args:
        path: the dataset directory (holding ``manifest.json``).
        max_readers: LMDB reader slots per shard environment (size it for the threads that read).

    Raises:
        NotFoundError: no such directory, or no manifest in it.
        FailedPreconditionError: a manifest of an unsupported format version.
        DataCorruptionError: a malformed manifest, bad ``labels.npy``/``sizes.npy``, or a missing shard (named).
    """
    return DatasetReader(path, max_readers=max_readers)
