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


def _put(q: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:  # noqa: PERF203 - the wait is the point
            continue
    return False


def _produce(
    q: queue.Queue[Any],
    stop: threading.Event,
    items: Iterable[Any],
    snapshot: Callable[[], Any] | None,
    on_exit: Callable[[], None] | None,
) -> None:
    try:
        for item in items:
            if not _put(q, stop, (item, snapshot() if snapshot is not None else None)):
                return
        _put(q, stop, _END)
    except BaseException as exc:  # handed to the consumer
        _put(q, stop, _Failure(exc))
    finally:
        if on_exit is not None:
            on_exit()


class _Prefetcher(Iterator[tuple[T, Any]]):
    """The iterator :func:`prefetch_iter` returns: its producer thread runs from construction until closed."""

    def __init__(
        self,
        items: Iterable[T],
        depth: int,
        name: str,
        snapshot: Callable[[], Any] | None,
        on_exit: Callable[[], None] | None,
    ) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        # The thread holds the queue and the event, not this object, so an iterator dropped unclosed is collected
        # and its ``__del__`` stops the thread.
        args = (self._q, self._stop, items, snapshot, on_exit)
        self._thread = threading.Thread(target=_produce, args=args, name=name, daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        """Whether the next item (or the end) is already waiting, so :meth:`__next__` will not block."""
        return self._done or not self._q.empty()

    def __next__(self) -> tuple[T, Any]:
        if self._done:
            raise StopIteration
        got = self._q.get()
        if got is _END:
            self.close()
            raise StopIteration
        if isinstance(got, _Failure):
            self.close()
            raise got.error
        return got  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the producer thread (it runs ``on_exit`` as it stops) and drop what it had made."""
        self._done = True
        self._stop.set()
        try:  # unblock a producer waiting on a full queue
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def __enter__(self) -> _Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def prefetch_iter(
    items: Iterable[T],
    depth: int,
    *,
    name: str = "nessa-prefetch",
    snapshot: Callable[[], Any] | None = None,
    on_exit: Callable[[], None] | None = None,
) -> _Prefetcher[T]:
    """Iterate ``items`` on a daemon thread, ``depth`` ahead; yields ``(item, snapshot())`` in order.

    The thread starts at once (so the first items are being made before the first ``next``). ``snapshot`` (called
    on the thread right after each item is produced) lets a caller know the producer's state that goes with each
    item. A producer exception is raised at the consumer, at that point of the sequence. ``close()`` on the returned
    iterator stops the thread (``on_exit`` runs on the thread as it stops); it is also a context manager.
    """
    if depth < 1:
        raise InvalidArgumentError(f"prefetch depth must be >= 1; got {depth}")
    return _Prefetcher(items, depth, name, snapshot, on_exit)


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
        self._initial: StageState | None = None
        self._it: Iterator[tuple[T, Any]] | None = None

    def state_dict(self) -> StageState:
        """The upstream's state as it was when the last item handed out was produced."""
        if self._state is not None:
            return dict(self._state)
        return dict(self._initial) if self._initial is not None else self.upstream.state_dict()

    def load_state_dict(self, state: StageState) -> None:
        """Resume the upstream (before iterating or :meth:`start`)."""
        if self._it is not None:
            raise InvalidArgumentError("load_state_dict after the prefetch thread started")
        self.upstream.load_state_dict(state)
        self._state = None

    def start(self) -> Prefetch[T]:
        """Start the background thread now (the first ``next`` starts it otherwise): open a stream ahead of use."""
        if self._it is None:
            self._initial = self.upstream.state_dict()
            self._it = prefetch_iter(
                self.upstream, self.depth, snapshot=self.upstream.state_dict, on_exit=self.upstream.close
            )
        return self

    def ready(self) -> bool:
        """Whether the next item is already made (``next`` will not wait); False before :meth:`start`."""
        return isinstance(self._it, _Prefetcher) and self._it.ready()

    def __next__(self) -> T:
        self.start()
        assert self._it is not None
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
