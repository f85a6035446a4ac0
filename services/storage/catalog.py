"""The datasets a daemon serves: every sub-directory of the data directory that holds a ``manifest.json``.

Datasets are addressed by name, never by path: a name is one path component of letters, digits, ``.``, ``_`` and
``-`` (not starting with a dot), looked up among the directories found under the data directory, whose real
paths must stay inside it. Nothing else on the disk can be reached through a request. Hidden directories (the
daemon's own state, ingest temporaries) are not datasets.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nessa.errors import DataCorruptionError, InvalidArgumentError, NessaError, NotFoundError
from nessa.metrics import DATASET_SIZE
from nessa.store import DatasetReader, open_dataset

__all__ = ["Catalog", "DatasetEntry", "check_name"]

log = logging.getLogger("nessa.storage")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST = "manifest.json"


def _is_name(name: str) -> bool:
    return bool(_NAME_RE.fullmatch(name)) and ".." not in name  # fullmatch: "$" would allow a trailing newline


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset name, else raise :class:`InvalidArgumentError`."""
    if not name:
        raise InvalidArgumentError("no dataset named: give a dataset name (see ListDatasets)")
    if not _is_name(name):
        raise InvalidArgumentError(
            f"{name!r} is not a dataset name: names are one word of letters, digits, '.', '_' and '-' "
            "(never a path); see ListDatasets for the names this daemon serves"
        )
    return name


@dataclass
class DatasetEntry:
    """One opened dataset: its reader, and the facts the daemon reports about it (read from the reader).

    Attributes:
        name: the dataset's name (its directory name).
        path: its directory.
        reader: the store's reader (thread-safe reads of sample bytes); every other fact comes from it.
        fingerprint: SHA-256 of ``manifest.json`` (changes when the dataset is re-ingested).
    """

    name: str
    path: Path
    reader: DatasetReader
    fingerprint: str

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def labels(self) -> np.ndarray:
        """int64 label per sample."""
        return self.reader.labels

    @property
    def sizes(self) -> np.ndarray:
        """Stored bytes per sample."""
        return self.reader.sizes

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.reader.num_classes)

    @property
    def class_names(self) -> list[str]:
        """Class names (may be empty)."""
        return [str(c) for c in self.reader.class_names]

    @property
    def codec(self) -> str:
        """``raw``, ``png``, ``jpeg`` or ``bytes``."""
        return str(self.reader.codec.kind)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one decoded sample (``()`` for encoded codecs)."""
        return tuple(int(d) for d in (self.reader.sample_shape or ()))

    @property
    def dtype(self) -> str:
        """Dtype of one decoded sample ("" for encoded codecs)."""
        dtype = self.reader.dtype
        return str(np.dtype(dtype)) if dtype is not None else ""

    @property
    def total_bytes(self) -> int:
        """Sum of the stored sample bytes."""
        return int(self.reader.total_bytes)

    @property
    def num_shards(self) -> int:
        """LMDB shards."""
        return int(self.reader.num_shards)

    @functools.cached_property
    def class_counts(self) -> list[int]:
        """Samples per label."""
        labels, n = self.labels, self.num_classes
        counts = np.bincount(labels, minlength=n) if len(labels) else np.zeros(n, np.int64)
        return [int(c) for c in counts]

    def nbytes(self, indices: np.ndarray | Sequence[int]) -> int:
        """Stored bytes of the given samples."""
        return int(self.reader.nbytes(indices))


def _open_entry(name: str, path: Path) -> DatasetEntry:
    reader = open_dataset(path)
    fingerprint = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    return DatasetEntry(name=name, path=path, reader=reader, fingerprint=fingerprint)


class Catalog:
    """The datasets under one data directory, opened once and looked up by name.

    Args:
        data_dir: the directory to serve.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir).resolve()
        self._entries: dict[str, DatasetEntry] = {}
        self._broken: dict[str, str] = {}
        self._corrupt: set[str] = set()  # broken because stored data is damaged (DATA_LOSS, not NOT_FOUND)
        self._lock = threading.Lock()

    def refresh(self) -> list[str]:
        """Open datasets that appeared since the last scan; return the names served."""
        with self._lock:
            for child in sorted(self.root.iterdir()):
                name = child.name
                if name in self._entries or not _is_name(name) or not (child / MANIFEST).is_file():
                    continue
                real = child.resolve()
                if real.parent != self.root and self.root not in real.parents:
                    why = "it links outside the daemon's data directory; move or copy it under the data directory"
                    if self._broken.get(name) != why:
                        log.warning("skipping dataset %s: it links outside the data directory (%s)", name, real)
                    self._broken[name] = why
                    continue
                try:
                    entry = _open_entry(name, real)
                except NessaError as exc:
                    if self._broken.get(name) != str(exc):
                        log.error("cannot serve dataset %s: %s", name, exc)
                    self._broken[name] = str(exc)
                    if isinstance(exc, DataCorruptionError):
                        self._corrupt.add(name)
                    else:
                        self._corrupt.discard(name)
                    continue
                self._broken.pop(name, None)
                self._entries[name] = entry
                DATASET_SIZE.labels(dataset=name).set(entry.total_bytes)
                log.info("serving dataset %s: %d samples, %d classes, %d bytes", name, len(entry),
                         entry.num_classes, entry.total_bytes)  # fmt: skip
            return sorted(self._entries)

    def names(self) -> list[str]:
        """Names of the datasets served (after a rescan for new ones)."""
        return self.refresh()

    def entries(self) -> list[DatasetEntry]:
        """Every dataset served, by name."""
        return [self._entries[name] for name in self.refresh()]

    def get(self, name: str) -> DatasetEntry:
        """The dataset called ``name``.

        Raises:
            InvalidArgumentError: ``name`` is not a valid name (e.g. a path).
            NotFoundError: no such dataset, or it could not be opened (the message says why).
            DataCorruptionError: it could not be opened because its stored data is damaged (a missing or
                truncated shard, a corrupt file).
        """
        check_name(name)
        entry = self._entries.get(name)
        if entry is None:
            self.refresh()
            entry = self._entries.get(name)
        if entry is None:
            broken = self._broken.get(name)
            if broken is not None and name in self._corrupt:
                raise DataCorruptionError(f"dataset {name!r} is damaged and cannot be served: {broken}")
            if broken is not None:
                raise NotFoundError(f"dataset {name!r} exists but cannot be served: {broken}")
            known = ", ".join(sorted(self._entries)) or "none"
            raise NotFoundError(
                f"no dataset named {name!r} under the daemon's data directory (serving: {known}); "
                "ingest it with `nessa ingest` or check the name"
            )
        return entry
