"""Run the upstream on a background thread, keeping a few items ready; the one thread helper of NeSSA."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from nessa.errors import InvalidArgumentError
from nessa.pipeline.base import Stage, StageState

__all__ = ["Prefetch", "prefetch_iter"]

T = TypeVar("T")
_END = object()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch_iter(
    items: Iterable[T],
    depth: int,
    *,
    name: str = "nessa-prefetch",
    snapshot: Callable[[], Any] | None = None,
    on_exit: Callable[[], None] | None = None,
) -> Iterator[tuple[T, Any]]:
    """Iterate ``items`` on a daemon thread, ``depth`` ahead; yields ``(item, snapshot())`` in order.

    ``snapshot`` (called on the thread right after each item is produced) lets a caller know the producer's state
    that goes with each item. A producer exception is raised at the consumer, at that point of the sequence.
    Closing the returned generator stops the thread (``on_exit`` runs on the thread as it stops).
    """
    if depth < 1:
        raise InvalidArgumentError(f"prefetch depth must be >= 1; got {depth}")
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:  # noqa: PERF203 - the wait is the point
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((item, snapshot() if snapshot is not None else None)):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer
            put(_Failure(exc))
        finally:
            if on_exit is not None:
                on_exit()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _END:
                return
            if isinstance(got, _Failure):
                raise got.error
            yield got
    finally:
        stop.set()
        try:  # unblock a producer waiting on a full queue
            while True:
                q.get_nowait()
        except queue.Empty:
            pass
        thread.join(5.0)


class Prefetch(Stage[T]):
    """Keep ``depth`` items of ``upstream`` ready on a background thread.

    ``last_wait`` is the seconds the consumer was blocked in the last ``next`` (the data wait a trainer reports).
    """

    def __init__(self, upstream: Stage[T], depth: int = 4) -> None:
        if depth < 1:
            raise InvalidArgumentError(f"prefetch depth must be >= 1; got {depth}")
        self.upstream = upstream
        self.depth = int(depth)
        self.last_wait = 0.0
        self._state: StageState | None = None
        self._it: Iterator[tuple[T, Any]] | None = None

    def state_dict(self) -> StageState:
        """The upstream's state as it was when the last item handed out was produced."""
        return dict(self._state) if self._state is not None else self.upstream.state_dict()

    def load_state_dict(self, state: StageState) -> None:
        """Resume the upstream (before iterating)."""
        self.upstream.load_state_dict(state)
        self._state = None

    def __next__(self) -> T:
        if self._it is None:
            self._it = prefetch_iter(
                self.upstream, self.depth, snapshot=self.upstream.state_dict, on_exit=self.upstream.close
            )
        start = time.perf_counter()
        try:
            item, state = next(self._it)
        finally:
            self.last_wait = time.perf_counter() - start
        self._state = state
        return item

    def close(self) -> None:
        """Stop the thread and the upstream."""
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
            self._it = None
        else:
            self.upstream.close()
