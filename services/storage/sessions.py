"""Selection sessions: a selector's state kept between Select calls, per (session, dataset, method[, class]).

A session is a training run's id. Stateful selectors (``drop_learned``'s loss history, AdaCore's moving averages)
need their state to survive from one call to the next; the daemon loads it into a fresh selector before the call
and saves what the selector holds after it. States are saved as JSON under ``<state_dir>/sessions`` (so a daemon
restart keeps them), at most ``max_sessions`` are kept (the least recently used dropped first, counted in
``nessa_sessions_evicted_total``), and calls of one session are serialised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nessa.errors import InvalidArgumentError
from nessa.metrics import SESSIONS, SESSIONS_EVICTED

__all__ = ["SessionState", "SessionStore", "check_session_name"]

log = logging.getLogger("nessa.storage")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
#: The key of the state of a selector run over every candidate (a global budget rule).
WHOLE = "all"


def check_session_name(session: str) -> str:
    """Return ``session`` if well formed (1–128 of ``A-Za-z0-9._:@-``, starting alphanumeric)."""
    if not _NAME_RE.fullmatch(session):
        shown = session[:64] + ("…" if len(session) > 64 else "")
        raise InvalidArgumentError(
            f"session {shown!r} is not a valid session name: use 1-128 letters, digits or ._:@- starting with a "
            "letter or digit (e.g. a run id)"
        )
    return session


@dataclass
class SessionState:
    """The saved selector states of one (session, dataset, method).

    Attributes:
        session: session name.
        dataset: dataset name.
        method: selector name.
        rounds: selector calls so far.
        parts: selector state per part (``"all"``, or the class label under a per-class budget rule).
        updated: Unix time of the last call.
    """

    session: str
    dataset: str
    method: str
    rounds: int = 0
    parts: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0

    @property
    def key(self) -> str:
        """File-name-safe key of (session, dataset, method)."""
        return session_key(self.session, self.dataset, self.method)

    def to_json(self) -> str:
        """The saved form."""
        return json.dumps(
            {
                "session": self.session,
                "dataset": self.dataset,
                "method": self.method,
                "rounds": self.rounds,
                "parts": self.parts,
                "updated": self.updated,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> SessionState:
        """Rebuild from :meth:`to_json`."""
        d = json.loads(text)
        return cls(
            session=d["session"],
            dataset=d["dataset"],
            method=d["method"],
            rounds=int(d.get("rounds", 0)),
            parts=dict(d.get("parts", {})),
            updated=float(d.get("updated", 0.0)),
        )


def session_key(session: str, dataset: str, method: str) -> str:
    """A file-name-safe key of (session, dataset, method)."""
    return hashlib.sha256(json.dumps([session, dataset, method]).encode()).hexdigest()[:32]


class SessionStore:
    """Selector states by (session, dataset, method), saved under ``directory``, at most ``max_sessions``.

    Args:
        directory: ``<state_dir>/sessions``.
        max_sessions: (session, dataset, method) states kept; the least recently used are dropped first.
    """

    def __init__(self, directory: Path, max_sessions: int = 256) -> None:
        if max_sessions < 1:
            raise InvalidArgumentError(f"max_sessions must be >= 1; got {max_sessions}")
        self.dir = Path(directory)
        self.max_sessions = int(max_sessions)
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}
        SESSIONS.set(len(self._files()))

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob("*.json"), key=lambda p: _mtime(p)) if self.dir.is_dir() else []

    @contextmanager
    def open(self, session: str, dataset: str, method: str) -> Iterator[SessionState]:
        """The state of (session, dataset, method), held exclusively; saved when the block ends without error."""
        check_session_name(session)
        key = session_key(session, dataset, method)
        with self._lock:
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:
            state = self._load(key) or SessionState(session=session, dataset=dataset, method=method)
            yield state
            state.updated = time.time()
            self._save(state)

    def _load(self, key: str) -> SessionState | None:
        try:
            return SessionState.from_json(self._path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("session state %s is unreadable (%s); starting that session over", self._path(key), exc)
            return None

    def _save(self, state: SessionState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(state.key)
        tmp = self.dir / f".{state.key}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(state.to_json(), encoding="utf-8")
        with self._lock:
            files = self._files()
            # File times come from a coarse clock: stamp each save after the newest, so "least recently used" is
            # the order of calls.
            newest = _mtime(files[-1]) if files else 0
            stamp = max(time.time_ns(), newest + 1)
            os.utime(tmp, ns=(stamp, stamp))
            os.replace(tmp, path)
            files = [p for p in files if p != path] + [path]
            stale = [p for p in files if p != path][: max(0, len(files) - self.max_sessions)]
            for p in stale:
                p.unlink(missing_ok=True)
                SESSIONS_EVICTED.inc()
                log.info("session state %s dropped (more than %d sessions kept)", p.name, self.max_sessions)
            SESSIONS.set(len(files) - len(stale))

    def list(self) -> list[tuple[SessionState, int]]:
        """Every kept state and its saved size in bytes, most recently used first."""
        out = []
        for path in reversed(self._files()):
            try:
                text = path.read_text(encoding="utf-8")
                out.append((SessionState.from_json(text), len(text.encode())))
            except (OSError, ValueError, KeyError):  # noqa: PERF203 - removed or rewritten meanwhile
                continue
        return out


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
