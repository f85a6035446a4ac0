"""All-or-nothing publication of ingested datasets: staging directories, renames, crash recovery.

An ingest writes every dataset it produces (``DEST``, and ``DEST-test`` when the source has a test split) into
one *staging directory* in DEST's parent, ``.DEST.tmp-<pid>-<random>/``, and only then moves them into place.
Nothing is ever written under ``DEST`` itself, so a crash (even ``kill -9``) or a bad input leaves no partial
dataset under the final name.

Publishing, under an exclusive ``flock`` on the parent directory (which serializes publications and recoveries
of every ingest into that directory):

1. a journal (``publish.json``: the run's ``ingest_id`` and the publication order) is written and fsynced;
2. the datasets are moved into place one at a time, ``DEST`` last: a new name with ``renameat2(RENAME_NOREPLACE)``,
   an existing one (``--overwrite``) by atomically *exchanging* the staged and the old directory
   (``renameat2(RENAME_EXCHANGE)``), so ``DEST`` names the old or the new dataset at every instant, never
   neither; the old copy lands in the staging directory;
3. the staging directory (holding the old copies) is removed.

``DEST`` appearing (step 2, last rename) is the commit point. A run killed before it is rolled back by the next
ingest into the same parent: each staging directory whose lock is free (its process is dead; ``flock`` locks die
with their process, so a recycled pid cannot fool it) is *recovered*: if ``DEST`` holds the journal's
``ingest_id`` the run had committed and only its cleanup is finished; otherwise every companion it had already
moved into place (``DEST-test``) is moved back out (or exchanged back with the old copy) and the staging directory
is deleted. So ``DEST`` and ``DEST-test`` appear together or not at all: a reader never sees a ``DEST`` without
its ``DEST-test``; between a crash and the next ingest a lone ``DEST-test`` can exist (or, with ``--overwrite``, a
new ``DEST-test`` beside the old ``DEST``) and recovery undoes it. A staging directory whose lock is held belongs
to a running ingest and is left alone.

Requires Linux's ``renameat2`` for ``--overwrite`` (the exchange); elsewhere overwriting is refused with an error
that says to remove the old dataset first. Plain publication falls back to ``rename`` after an existence check
made under the parent lock.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.store.manifest import MANIFEST_FILE

__all__ = [
    "JOURNAL_FILE",
    "LOCK_FILE",
    "STAGING_PATTERN",
    "Staging",
    "fsync_dir",
    "fsync_tree",
    "recover_stale",
]

STAGING_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})$")
LOCK_FILE = ".lock"
JOURNAL_FILE = "publish.json"

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _libc_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _libc_renameat2()


class _Unsupported(OSError):
    """renameat2 (or the flag) is not available here."""


def _rename2(src: Path, dst: Path, flags: int) -> None:
    if _renameat2 is None:
        raise _Unsupported(errno.ENOSYS, "renameat2 is not available on this platform")
    rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise _Unsupported(err, f"renameat2 flag {flags} is not supported here: {os.strerror(err)}")
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two existing paths."""
    try:
        _rename2(a, b, _RENAME_EXCHANGE)
    except _Unsupported as exc:
        raise FailedPreconditionError(
            f"cannot replace {b} atomically here ({exc.strerror}); remove the old dataset yourself "
            "(`rm -r` it) and ingest again without --overwrite"
        ) from exc


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Move ``src`` to the new name ``dst``; fails if ``dst`` exists. Call under the parent lock."""
    try:
        _rename2(src, dst, _RENAME_NOREPLACE)
        return
    except _Unsupported:
        pass
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    os.rename(src, dst)


def fsync_dir(path: Path | str) -> None:
    """Flush a directory to disk (fsync), making the names created or removed in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path | str) -> None:
    """Flush every file and directory under ``root`` to disk (files first, then their directories, bottom-up)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a directory for the duration of the block."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _ingest_id_at(path: Path) -> str | None:
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("ingest_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _rollback(staging: Path, parent: Path, ingest_id: str, order: Sequence[str]) -> None:
    """Undo a publication that did not reach its commit point (its last name). Call under the parent lock."""
    for name in reversed(order):
        final = parent / name
        if _ingest_id_at(final) != ingest_id:
            continue  # this one was never moved into place
        held = staging / name
        if os.path.lexists(held):
            _exchange(held, final)  # put the old dataset back; ours goes to the staging directory
        else:
            os.rename(final, held)
    fsync_dir(parent)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=False)


def _recover_one(staging: Path, parent: Path) -> None:
    journal = staging / JOURNAL_FILE
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
        ingest_id, order = str(data["ingest_id"]), [str(n) for n in data["order"]]
    except (OSError, ValueError, KeyError, TypeError):
        _remove(staging)  # publication never started: nothing outside the staging directory to undo
        return
    if order and _ingest_id_at(parent / order[-1]) != ingest_id:
        _rollback(staging, parent, ingest_id, order)
    _remove(staging)
    fsync_dir(parent)


def _lock_is_free(staging: Path) -> bool:
    try:
        fd = os.open(staging / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return True  # killed between creating the directory and its lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def recover_stale(parent: Path | str) -> list[Path]:
    """Recover (roll back or finish) every staging directory in ``parent`` left by a dead ingest.

    Takes the parent directory's lock itself. Staging directories of running ingests are left alone.

    Returns:
        The staging directories recovered and removed.
    """
    parent = Path(parent)
    with _locked_dir(parent):
        return _recover_stale_locked(parent)


def _recover_stale_locked(parent: Path) -> list[Path]:
    done = []
    for child in sorted(parent.iterdir()):
        if not STAGING_PATTERN.match(child.name) or not child.is_dir() or child.is_symlink():
            continue
        if _lock_is_free(child):
            _recover_one(child, parent)
            done.append(child)
    return done


def _check_dest_name(dest: Path) -> None:
    name = dest.name
    if not name or name in (".", "..") or name.startswith("."):
        raise InvalidArgumentError(
            f"cannot ingest into {str(dest)!r}: the destination must be a directory name not starting with '.' "
            "(hidden names are reserved for ingest temporaries)"
        )


class Staging:
    """A staging directory for one ingest run and the all-or-nothing publication of what it holds.

    Use as a context manager: write each dataset into :meth:`path`, then call :meth:`publish`. Leaving the block
    without publishing (an exception, a bad input) deletes the staging directory and publishes nothing.

    Args:
        dest: the final directory of the main dataset.
        suffixes: one per dataset to publish, appended to ``dest``'s name (``("", "-test")``).
        overwrite: replace existing datasets (atomically) instead of refusing.

    Raises:
        FailedPreconditionError: a destination exists (without ``overwrite``), or exists and is not a nessa
            dataset (even with ``overwrite``: nessa never replaces a directory it did not write).
        InvalidArgumentError: a destination name that is empty or hidden.
    """

    def __init__(self, dest: Path | str, suffixes: Sequence[str] = ("",), *, overwrite: bool = False) -> None:
        self.dest = Path(os.path.abspath(dest))
        _check_dest_name(self.dest)
        if len(set(suffixes)) != len(suffixes) or not suffixes:
            raise InvalidArgumentError(f"suffixes must be distinct and non-empty; got {list(suffixes)}")
        self.parent = self.dest.parent
        self.names = [self.dest.name + s for s in suffixes]
        self.suffixes = list(suffixes)
        self.overwrite = overwrite
        self.dir: Path | None = None
        self._lock_fd: int | None = None
        self.published = False

    def _check_targets(self) -> None:
        for name in self.names:
            final = self.parent / name
            if not os.path.lexists(final):
                continue
            if not self.overwrite:
                raise FailedPreconditionError(
                    f"{final} already exists; pass --overwrite (overwrite=True) to replace it, or choose another "
                    "destination"
                )
            if not final.is_dir() or not (final / MANIFEST_FILE).is_file():
                raise FailedPreconditionError(
                    f"{final} exists and is not a nessa dataset (no {MANIFEST_FILE}); nessa will not replace it "
                    "even with --overwrite: move it away or choose another destination"
                )

    def __enter__(self) -> Staging:
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FailedPreconditionError(
                f"cannot create the destination's parent directory {self.parent}: {exc.strerror}"
            ) from exc
        with _locked_dir(self.parent):
            _recover_stale_locked(self.parent)
            self._check_targets()
            staging = self.parent / f".{self.dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            staging.mkdir()
            fd = os.open(staging / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.dir, self._lock_fd = staging, fd
        return self

    def path(self, suffix: str = "") -> Path:
        """Where to write the dataset that will be published as ``dest`` + ``suffix``."""
        if self.dir is None:
            raise FailedPreconditionError("the staging directory is not open; use Staging as a context manager")
        if suffix not in self.suffixes:
            raise InvalidArgumentError(f"unknown suffix {suffix!r}; this staging publishes {self.suffixes}")
        return self.dir / (self.dest.name + suffix)

    def publish(self, ingest_id: str) -> list[Path]:
        """Move every staged dataset into place, ``dest`` last; all or nothing.

        Args:
            ingest_id: the ``ingest_id`` written in every staged manifest (recovery recognises them by it).

        Returns:
            The published paths, in ``suffixes`` order.
        """
        if self.dir is None:
            raise FailedPreconditionError("the staging directory is not open; use Staging as a context manager")
        staging = self.dir
        for name in self.names:
            if _ingest_id_at(staging / name) != ingest_id:
                raise FailedPreconditionError(f"staged dataset {name} is incomplete (no manifest with this ingest id)")
            fsync_tree(staging / name)
        order = list(reversed(self.names))  # companions first, the main dataset (the commit point) last
        journal_tmp = staging / (JOURNAL_FILE + ".tmp")
        with open(journal_tmp, "w", encoding="utf-8") as fh:
            json.dump({"ingest_id": ingest_id, "order": order}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(journal_tmp, staging / JOURNAL_FILE)
        fsync_dir(staging)
        with _locked_dir(self.parent):
            self._check_targets()
            try:
                for name in order:
                    final = self.parent / name
                    if os.path.lexists(final):
                        _exchange(staging / name, final)
                    else:
                        _rename_noreplace(staging / name, final)
                    fsync_dir(self.parent)
            except BaseException:
                _rollback(staging, self.parent, ingest_id, order)
                raise
            self.published = True
            self._cleanup_locked()
        return [self.parent / name for name in self.names]

    def _cleanup_locked(self) -> None:
        if self.dir is not None and self.dir.exists():
            _remove(self.dir)
            fsync_dir(self.parent)
        self.dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.dir is None:
            return
        with _locked_dir(self.parent):
            self._cleanup_locked()
