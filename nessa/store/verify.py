"""Checking a stored dataset against its manifest: :func:`verify` (the ``nessa verify`` command).

For every shard: the directory and ``data.mdb`` exist; LMDB opens it and the file is not truncated; it holds
exactly ``count`` records whose keys are ``first_index .. first_index + count - 1`` in order; each value's length
matches ``sizes.npy``; their sum matches the shard's ``bytes``; the SHA-256 of its logical content (see
:mod:`nessa.store.manifest`) matches the manifest. Also ``labels.npy``, ``sizes.npy`` and column files against their
SHA-256, shapes and ranges. Every problem is reported with the path of what is wrong; checking goes on past a
bad shard so one run lists them all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

import nessa.store.lmdbenv as lmdbenv
from nessa.errors import DataCorruptionError
from nessa.store.lmdbenv import ShardCorruptionError
from nessa.store.manifest import KEY_BYTES, LABELS_FILE, SIZES_FILE, Manifest, ShardInfo, encode_key

__all__ = ["Problem", "VerifyReport", "verify"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        path: the shard directory or file concerned.
        what: what is wrong.
    """

    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found.

    Attributes:
        path: the dataset directory.
        manifest: its manifest.
        shards_checked: number of shards examined.
        samples_checked: records read and hashed.
        bytes_checked: value bytes read and hashed.
        problems: everything found wrong (empty when the dataset is sound).
    """

    path: Path
    manifest: Manifest
    shards_checked: int = 0
    samples_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(root: Path, manifest: Manifest, rel: str, problems: list[Problem]) -> np.ndarray | None:
    path = root / rel
    if not path.is_file():
        problems.append(Problem(path, "the file is missing"))
        return None
    want = manifest.files.get(rel)
    if want is None:
        problems.append(Problem(path, "the manifest records no sha256 for it"))
    elif _file_sha256(path) != want:
        problems.append(Problem(path, "sha256 mismatch: the file was modified or corrupted"))
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        problems.append(Problem(path, f"unreadable ({exc})"))
        return None


def _check_shard(
    root: Path, shard: ShardInfo, sizes: np.ndarray | None, report: VerifyReport, problems: list[Problem]
) -> None:
    shard_dir = root / shard.path
    try:
        key, env = lmdbenv.acquire(shard_dir)
    except ShardCorruptionError as exc:
        problems.append(Problem(shard_dir, exc.what))
        return
    digest = hashlib.sha256()
    count = 0
    total = 0
    expect = shard.first_index
    try:
        with env.begin(buffers=True) as txn:
            for k, v in txn.cursor():
                if len(k) != KEY_BYTES or bytes(k) != encode_key(expect):
                    got = int.from_bytes(k, "big") if len(k) == KEY_BYTES else bytes(k)
                    problems.append(Problem(shard_dir, f"record {count} has key {got!r}, expected index {expect}"))
                    return
                size = len(v)
                if sizes is not None and expect < len(sizes) and sizes[expect] != size:
                    problems.append(
                        Problem(shard_dir, f"sample {expect} has {size} bytes, sizes.npy says {int(sizes[expect])}")
                    )
                    return
                digest.update(k)
                digest.update(size.to_bytes(8, "big"))
                digest.update(v)
                count += 1
                total += size
                expect += 1
                if count > shard.count:
                    problems.append(Problem(shard_dir, f"more than {shard.count} records (the manifest's count)"))
                    return
    except lmdb.Error as exc:
        problems.append(Problem(shard_dir, f"LMDB error while reading ({type(exc).__name__}: {exc})"))
        return
    finally:
        lmdbenv.release(key)
        report.shards_checked += 1
        report.samples_checked += count
        report.bytes_checked += total
    if count != shard.count:
        problems.append(Problem(shard_dir, f"{count} records, the manifest says {shard.count} (samples missing)"))
    elif total != shard.bytes:
        problems.append(Problem(shard_dir, f"{total} value bytes, the manifest says {shard.bytes}"))
    elif digest.hexdigest() != shard.sha256:
        problems.append(
            Problem(shard_dir, "sha256 mismatch: a stored value was modified or corrupted (data.mdb is damaged)")
        )


def verify(path: Path | str, *, raise_on_error: bool = True) -> VerifyReport:
    """Check every shard and file of the dataset at ``path`` against its manifest.

    Args:
        path: the dataset directory.
        raise_on_error: raise :class:`DataCorruptionError` listing every problem (default); if False, return the
            report with its ``problems`` instead.

    Returns:
        The report (``report.ok`` when the dataset is sound).

    Raises:
        NotFoundError: no dataset at ``path``.
        FailedPreconditionError: a manifest of an unsupported format version.
        DataCorruptionError: a malformed manifest (always), or any problem found (with ``raise_on_error``).
    """
    root = Path(path).absolute()
    manifest = Manifest.load(root)
    report = VerifyReport(root, manifest)
    problems = report.problems
    n = manifest.num_samples
    labels = _check_file(root, manifest, LABELS_FILE, problems)
    if labels is not None:
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            problems.append(Problem(root / LABELS_FILE, f"expected {n} integers, found {labels.shape} {labels.dtype}"))
        elif n and (labels.min() < 0 or labels.max() >= manifest.num_classes):
            problems.append(Problem(root / LABELS_FILE, f"labels outside [0, {manifest.num_classes})"))
    sizes = _check_file(root, manifest, SIZES_FILE, problems)
    if sizes is not None and (sizes.shape != (n,) or sizes.dtype.kind not in "iu"):
        problems.append(Problem(root / SIZES_FILE, f"expected {n} integers, found {sizes.shape} {sizes.dtype}"))
        sizes = None
    if sizes is not None:
        want = manifest.codec.sample_nbytes
        if want is not None and n and not np.all(sizes == want):
            problems.append(Problem(root / SIZES_FILE, f"sizes differ from the raw codec's {want} bytes per sample"))
    for column in manifest.columns:
        arr = _check_file(root, manifest, column.file, problems)
        if arr is not None and (arr.ndim < 1 or len(arr) != n):
            problems.append(Problem(root / column.file, f"column {column.name!r} does not have {n} rows"))
    for shard in manifest.shards:
        _check_shard(root, shard, sizes, report, problems)
    if problems and raise_on_error:
        listing = "\n  ".join(str(p) for p in problems)
        raise DataCorruptionError(
            f"dataset {root} failed verification ({len(problems)} problem(s)):\n  {listing}\n"
            "re-ingest the dataset (or restore the damaged shards from a copy)"
        )
    return report
