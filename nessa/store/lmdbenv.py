"""Read-only LMDB environments for sealed shards: one per shard file per process, shared, fork-aware.

LMDB forbids opening one environment twice in a process (py-lmdb refuses with "already open in this
process"), and an environment must not be used across ``fork()``. So every reader and :func:`nessa.store.verify`
in a process share one environment per shard file, counted by reference, and the first use after a fork closes
the inherited ones (safe here: they are read-only and unlocked) and opens fresh ones.

Shards are immutable once published, so environments are opened ``readonly=True, lock=False`` (no lock file, no
reader table), ``readahead=False`` (random reads of data larger than RAM), with ``max_readers`` sized for the
threads that read. Opening also checks that ``data.mdb`` is at least as long as LMDB's last used page says:
reading a page past the end of a truncated, memory-mapped file would kill the process with ``SIGBUS`` instead of
raising.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb

from nessa.errors import DataCorruptionError

__all__ = [
    "DATA_FILE",
    "DEFAULT_MAX_READERS",
    "ShardCorruptionError",
    "SharedEnv",
    "acquire",
    "release",
    "required_file_size",
]

DATA_FILE = "data.mdb"
#: Enough for a daemon's thread pool; LMDB's own default is 126. Unused slots cost nothing with ``lock=False``.
DEFAULT_MAX_READERS = 512

EnvKey = tuple[int, int]


class SharedEnv:
    """An open shard environment and how many holders it has in this process."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self.env = env
        self.path = path
        self.refs = 0


_lock = threading.Lock()
_pid = os.getpid()
_envs: dict[EnvKey, SharedEnv] = {}


def _after_fork_in_child() -> None:
    global _lock, _pid
    _lock = threading.Lock()
    _pid = -1  # the next acquire/release closes the inherited environments


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_quietly(env: lmdb.Environment) -> None:
    try:
        env.close()
    except lmdb.Error:
        pass


def _reset_if_forked() -> None:
    global _pid
    if _pid == os.getpid():
        return
    for shared in _envs.values():
        _close_quietly(shared.env)
    _envs.clear()
    _pid = os.getpid()


def required_file_size(env: lmdb.Environment) -> int:
    """Bytes ``data.mdb`` must have for every page LMDB may read: ``(last_pgno + 1) * page_size``."""
    return (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])


class ShardCorruptionError(DataCorruptionError):
    """A shard that cannot be opened safely; ``shard_dir`` and ``what`` say which and why."""

    def __init__(self, shard_dir: Path, what: str) -> None:
        super().__init__(
            f"shard {shard_dir}: {what}; the dataset is damaged: run `nessa verify` on it and re-ingest it "
            "(or restore the shard from a copy)"
        )
        self.shard_dir = shard_dir
        self.what = what


def _damaged(shard_dir: Path, what: str) -> ShardCorruptionError:
    return ShardCorruptionError(shard_dir, what)


def acquire(shard_dir: Path | str, max_readers: int = DEFAULT_MAX_READERS) -> tuple[EnvKey, lmdb.Environment]:
    """Open (or share) the read-only environment of the shard in ``shard_dir``.

    Returns:
        The key to :func:`release` it with, and the environment.

    Raises:
        ShardCorruptionError: (a :class:`DataCorruptionError`) the shard directory or its ``data.mdb`` is missing,
            LMDB cannot open it, or the file is shorter than LMDB's last page (truncated). The message names the
            shard.
    """
    shard_dir = Path(shard_dir)
    data = shard_dir / DATA_FILE
    if not shard_dir.is_dir():
        raise _damaged(shard_dir, "the shard directory is missing")
    try:
        st = os.stat(data)
    except FileNotFoundError:
        raise _damaged(shard_dir, f"{DATA_FILE} is missing") from None
    key: EnvKey = (st.st_dev, st.st_ino)
    with _lock:
        _reset_if_forked()
        shared = _envs.get(key)
        if shared is None:
            try:
                env = lmdb.open(
                    str(shard_dir),
                    subdir=True,
                    readonly=True,
                    lock=False,
                    readahead=False,
                    max_readers=max_readers,
                    max_dbs=0,
                )
            except lmdb.Error as exc:
                raise _damaged(shard_dir, f"LMDB cannot open it ({type(exc).__name__}: {exc})") from exc
            need = required_file_size(env)
            have = os.stat(data).st_size
            if have < need:
                env.close()
                raise _damaged(shard_dir, f"{DATA_FILE} is truncated: {have} bytes, LMDB's pages need {need}")
            shared = SharedEnv(env, shard_dir)
            _envs[key] = shared
        shared.refs += 1
        return key, shared.env


def release(key: EnvKey) -> None:
    """Give back one hold on a shard environment; the last holder in this process closes it."""
    with _lock:
        if _pid != os.getpid():
            _reset_if_forked()
            return
        shared = _envs.get(key)
        if shared is None:
            return
        shared.refs -= 1
        if shared.refs <= 0:
            del _envs[key]
            shared.env.close()
