"""Overlapping the trainer's I/O with its compute: selections requested ahead, batches prefetched.

Two background workers, each a single daemon thread that hands results to the training loop:

* :class:`SelectionPipeline` runs selection jobs (push a proxy, ask the daemon for a selection) in submission
  order. The trainer submits the job for epoch ``e + 1`` at the start of epoch ``e`` with the proxy exported at
  the end of epoch ``e - 1``, so the daemon selects while the trainer trains. One thread, FIFO: a job's proxy
  push never overtakes the previous job's ``Select``, which matters because the daemon keeps one proxy per
  dataset.
* :class:`BatchPrefetcher` drains a sample stream into training batches of exactly ``batch_size`` (the daemon's
  messages are bounded in bytes, not in samples), decoding them into tensors ahead of the training step.

Both re-raise a worker's exception in the training thread at the point it asks for the result; neither ever
substitutes other data. The time the training loop spends blocked in :meth:`SelectionPipeline.result` and
:meth:`BatchPrefetcher.__next__` is what the trainer reports as data wait.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nessa.errors import FailedPreconditionError

__all__ = ["BatchPrefetcher", "SelectionJob", "SelectionPipeline"]

R = TypeVar("R")
B = TypeVar("B")


@dataclass
class SelectionJob:
    """What the trainer needs selected for one epoch.

    Attributes:
        epoch: the epoch the selection is for.
        proxy: the serialized proxy the selection must use, or ``None`` for a method that needs no proxy.
        proxy_version: that proxy's version (``None`` without a proxy).
        push: push ``proxy`` before selecting (False when an earlier job already pushed the same proxy).
        extra: anything else the fetch function needs (JSON-able).
    """

    epoch: int
    proxy: bytes | None = None
    proxy_version: int | None = None
    push: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class _Slot(Generic[R]):
    __slots__ = ("done", "error", "job", "value")

    def __init__(self, job: SelectionJob) -> None:
        self.job = job
        self.done = threading.Event()
        self.value: R | None = None
        self.error: BaseException | None = None


class SelectionPipeline(Generic[R]):
    """Runs selection jobs one at a time on a background thread, in submission order.

    Args:
        fetch: does the work of one job (push, select) and returns its result; called on the worker thread.
        name: thread name (for debugging).
    """

    def __init__(self, fetch: Callable[[SelectionJob], R], name: str = "nessa-selection") -> None:
        self._fetch = fetch
        self._slots: dict[int, _Slot[R]] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Slot[R] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            slot = self._queue.get()
            if slot is None:
                return
            try:
                slot.value = self._fetch(slot.job)
            except BaseException as exc:  # handed to the training thread in result()
                slot.error = exc
            finally:
                slot.done.set()

    def submit(self, job: SelectionJob) -> None:
        """Queue ``job``; one job per epoch."""
        with self._lock:
            if self._closed:
                raise FailedPreconditionError("the selection pipeline is closed; create a new one")
            if job.epoch in self._slots:
                raise FailedPreconditionError(f"a selection for epoch {job.epoch} was already requested")
            slot: _Slot[R] = _Slot(job)
            self._slots[job.epoch] = slot
        self._queue.put(slot)

    def submitted(self, epoch: int) -> bool:
        """Whether a job for ``epoch`` was submitted (and not yet taken by :meth:`result`)."""
        with self._lock:
            return epoch in self._slots

    def pending_jobs(self) -> list[SelectionJob]:
        """Jobs submitted and not yet taken by :meth:`result`, in epoch order (for a checkpoint)."""
        with self._lock:
            return [self._slots[e].job for e in sorted(self._slots)]

    def ready(self, epoch: int) -> R | None:
        """The result for ``epoch`` if it is done, without waiting or taking it (``None`` otherwise)."""
        with self._lock:
            slot = self._slots.get(epoch)
        if slot is None or not slot.done.is_set() or slot.error is not None:
            return None
        return slot.value

    def result(self, epoch: int, timeout: float | None = None) -> tuple[R, float]:
        """Wait for and take the result of ``epoch``'s job.

        Returns:
            ``(result, seconds waited)``.

        Raises:
            FailedPreconditionError: no job was submitted for ``epoch``, or it did not finish within ``timeout``.
            Exception: whatever the job raised.
        """
        with self._lock:
            slot = self._slots.get(epoch)
        if slot is None:
            raise FailedPreconditionError(f"no selection was requested for epoch {epoch}; submit a job first")
        start = time.perf_counter()
        if not slot.done.wait(timeout):
            raise FailedPreconditionError(
                f"the selection for epoch {epoch} did not finish within {timeout} s; check the storage daemon"
            )
        waited = time.perf_counter() - start
        with self._lock:
            self._slots.pop(epoch, None)
        if slot.error is not None:
            raise slot.error
        return slot.value, waited  # type: ignore[return-value]

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking jobs; waits up to ``timeout`` for the job in progress (its result is dropped)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def __enter__(self) -> SelectionPipeline[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


class BatchPrefetcher(Generic[B]):
    """Iterates ``source`` on a background thread, keeping up to ``depth`` converted items ready.

    Args:
        source: an iterable (e.g. a stream of training batches); iterated on the worker thread only.
        convert: applied to each item on the worker thread (e.g. decode bytes into tensors).
        depth: how many converted items to keep ready.
        name: thread name.

    Iterating yields the converted items in order. ``wait_seconds`` accumulates the time the consumer spent
    blocked waiting for an item; ``waits`` lists each wait. :meth:`close` stops the worker (it cancels the
    source if the source has a ``cancel`` or ``close`` method).
    """

    def __init__(
        self,
        source: Iterable[Any],
        convert: Callable[[Any], B],
        depth: int = 4,
        name: str = "nessa-prefetch",
    ) -> None:
        if depth < 1:
            raise FailedPreconditionError(f"prefetch depth must be >= 1; got {depth}")
        self._source = source
        self._convert = convert
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.wait_seconds = 0.0
        self.waits: list[float] = []
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            if self._try_put(item):
                return True
        return False

    def _try_put(self, item: Any) -> bool:
        try:
            self._queue.put(item, timeout=0.1)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        try:
            for raw in self._source:
                if self._stop.is_set():
                    return
                if not self._put(self._convert(raw)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer in __next__
            self._put(_Failure(exc))

    def __iter__(self) -> Iterator[B]:
        return self

    def __next__(self) -> B:
        if self._finished:
            raise StopIteration
        start = time.perf_counter()
        item = self._queue.get()
        waited = time.perf_counter() - start
        self.wait_seconds += waited
        self.waits.append(waited)
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item  # type: ignore[no-any-return]

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker and release the source."""
        self._stop.set()
        for name in ("cancel", "close"):
            fn = getattr(self._source, name, None)
            if callable(fn):
                try:
                    fn()
                except Exception:  # closing a finished stream may fail; nothing to do about it
                    pass
                break
        self._drain()  # unblock a worker waiting on a full queue
        self._thread.join(timeout)
        self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __enter__(self) -> BatchPrefetcher[B]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
