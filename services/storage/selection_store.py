"""Selections by id: an LRU memory cache bounded in bytes over a bounded directory of saved selections.

Saved selections (``<state_dir>/selections/<id>.npz``: indices, weights and :meth:`Selection.meta` as JSON) outlive
a daemon restart; the newest ``max_saved`` are kept, oldest removed first.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from nessa.errors import InvalidArgumentError, NotFoundError
from nessa.metrics import SELECTION_CACHE_BYTES
from nessa.records import Selection

__all__ = ["SelectionStore", "check_selection_id"]

log = logging.getLogger("nessa.storage")

_ID_RE = re.compile(r"sel-[0-9a-f]{24}")


def check_selection_id(selection_id: str) -> str:
    """Return ``selection_id`` if well formed, else raise :class:`InvalidArgumentError`."""
    if not isinstance(selection_id, str) or not _ID_RE.fullmatch(selection_id):
        raise InvalidArgumentError(
            f"{selection_id!r} is not a selection id (ids look like 'sel-' and 24 hex digits); "
            "pass the id that Select returned"
        )
    return selection_id


class SelectionStore:
    """Selections by id: an LRU memory cache bounded in bytes over a bounded directory of saved selections.

    Args:
        directory: where selections are saved (``<state_dir>/selections``).
        cache_bytes: memory bound of the in-memory cache.
        max_saved: selections kept on disk.
    """

    def __init__(self, directory: Path, cache_bytes: int, max_saved: int) -> None:
        self.dir = Path(directory)
        self.cache_bytes = int(cache_bytes)
        self.max_saved = int(max_saved)
        self._cache: OrderedDict[str, Selection] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes held by the memory cache."""
        return self._held

    def __contains__(self, selection_id: str) -> bool:
        return selection_id in self._cache or self._path(selection_id).is_file()

    def _path(self, selection_id: str) -> Path:
        return self.dir / f"{selection_id}.npz"

    def put(self, sel: Selection) -> None:
        """Keep ``sel`` in memory and on disk."""
        self._save(sel)
        self._remember(sel)

    def get(self, selection_id: str) -> Selection:
        """The selection with this id (from memory, else from disk).

        Raises:
            InvalidArgumentError: a malformed id.
            NotFoundError: no such selection (never made here, or removed from disk).
        """
        check_selection_id(selection_id)
        with self._lock:
            sel = self._cache.get(selection_id)
            if sel is not None:
                self._cache.move_to_end(selection_id)
                return sel
        sel = self._load(selection_id)
        if sel is None:
            raise NotFoundError(
                f"no selection {selection_id!r} on this daemon (never made here, or older than the "
                f"{self.max_saved} kept); call Select again"
            )
        self._remember(sel)
        return sel

    def find(self, selection_id: str) -> Selection | None:
        """Like :meth:`get` but ``None`` when missing."""
        try:
            return self.get(selection_id)
        except NotFoundError:
            return None

    def list(self, dataset: str = "") -> list[Selection]:
        """The saved selections (of ``dataset``, or all), newest first."""
        out = []
        for path in sorted(self.dir.glob("sel-*.npz"), key=_mtime_ns, reverse=True) if self.dir.is_dir() else []:
            sel = self.find(path.stem)
            if sel is not None and (not dataset or sel.dataset == dataset):
                out.append(sel)
        return out

    def _remember(self, sel: Selection) -> None:
        with self._lock:
            old = self._cache.pop(sel.id, None)
            if old is not None:
                self._held -= old.nbytes
            self._cache[sel.id] = sel
            self._held += sel.nbytes
            while self._held > self.cache_bytes and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._held -= evicted.nbytes
            SELECTION_CACHE_BYTES.set(self._held)

    def _save(self, sel: Selection) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, indices=sel.indices, weights=sel.weights, meta=np.array(json.dumps(sel.meta())))
        tmp = self.dir / f".{sel.id}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(buf.getvalue())
        with self._lock:
            saved = sorted(self.dir.glob("sel-*.npz"), key=_mtime_ns)
            # File times come from a coarse clock (several saves may share one): stamp each save strictly after the
            # newest one, so "oldest first" is the order of saving, also across restarts.
            newest = _mtime_ns(saved[-1]) if saved else 0
            stamp = max(time.time_ns(), newest + 1)
            os.utime(tmp, ns=(stamp, stamp))
            path = self._path(sel.id)
            os.replace(tmp, path)
            saved = [p for p in saved if p != path] + [path]
            for stale in saved[: max(0, len(saved) - self.max_saved)]:
                stale.unlink(missing_ok=True)

    def _load(self, selection_id: str) -> Selection | None:
        path = self._path(selection_id)
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                return Selection.from_meta(meta, npz["indices"], npz["weights"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("saved selection %s is unreadable (%s); ignoring it", path, exc)
            return None


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # removed meanwhile
        return 0
