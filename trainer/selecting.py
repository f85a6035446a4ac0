"""The trainer's side of selection: export the model as a proxy, push it, ask for a selection — ahead of time.

:class:`SelectionPipeline` runs selection jobs on one background thread in submission order (a job's proxy push
never overtakes the previous job's ``Select``: the daemon keeps one proxy per dataset), so the daemon selects for
epoch ``e + 1`` while epoch ``e`` trains. A job's exception is raised in the training thread when it takes the
result; nothing else is ever substituted.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import nn

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.trainer.batches import SampleDecoder

__all__ = ["ProxyExporter", "SelectionJob", "SelectionPipeline"]

R = TypeVar("R")


@dataclass
class SelectionJob:
    """What one epoch needs selected.

    Attributes:
        epoch: the epoch the selection is for.
        proxy: the serialized proxy the selection must use, or ``None`` for a method that needs no proxy.
        proxy_version: that proxy's version (``None`` without a proxy).
        push: push ``proxy`` before selecting (False when an earlier job already pushed the same proxy).
    """

    epoch: int
    proxy: bytes | None = None
    proxy_version: int | None = None
    push: bool = True

    def to_state(self) -> dict[str, Any]:
        """Checkpoint form (the proxy's bytes included: a resumed run selects with the same proxy)."""
        return {"epoch": self.epoch, "proxy": self.proxy, "proxy_version": self.proxy_version}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SelectionJob:
        """Rebuild from :meth:`to_state`; the proxy is pushed again."""
        return cls(epoch=int(state["epoch"]), proxy=state.get("proxy"), proxy_version=state.get("proxy_version"))


class SelectionPipeline(Generic[R]):
    """Runs selection jobs one at a time on a background thread, in submission order.

    Args:
        fetch: does one job's work (push, select); called on the worker thread.
    """

    def __init__(self, fetch: Callable[[SelectionJob], R]) -> None:
        self._fetch = fetch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nessa-selection")
        self._pending: dict[int, tuple[SelectionJob, Future[R]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: SelectionJob) -> None:
        """Queue ``job``; one job per epoch."""
        with self._lock:
            if self._closed:
                raise FailedPreconditionError("the selection pipeline is closed; create a new one")
            if job.epoch in self._pending:
                raise InvalidArgumentError(f"a selection for epoch {job.epoch} was already requested")
            self._pending[job.epoch] = (job, self._executor.submit(self._fetch, job))

    def submitted(self, epoch: int) -> bool:
        """Whether a job for ``epoch`` was submitted and not yet taken."""
        with self._lock:
            return epoch in self._pending

    def ready(self, epoch: int) -> bool:
        """Whether ``epoch``'s job has finished (its result can be taken without waiting)."""
        with self._lock:
            entry = self._pending.get(epoch)
        return entry is not None and entry[1].done()

    def peek(self, epoch: int) -> R | None:
        """``epoch``'s result if its job has finished well, without taking it (None otherwise)."""
        with self._lock:
            entry = self._pending.get(epoch)
        if entry is None or not entry[1].done() or entry[1].exception() is not None:
            return None
        return entry[1].result()

    def pending_jobs(self) -> list[SelectionJob]:
        """Jobs submitted and not yet taken, in epoch order (for a checkpoint)."""
        with self._lock:
            return [self._pending[e][0] for e in sorted(self._pending)]

    def result(self, epoch: int) -> tuple[R, float]:
        """Wait for and take ``epoch``'s result; returns ``(result, seconds waited)``.

        Raises:
            FailedPreconditionError: no job was submitted for ``epoch``.
            Exception: whatever the job raised.
        """
        with self._lock:
            entry = self._pending.pop(epoch, None)
        if entry is None:
            raise FailedPreconditionError(f"no selection was requested for epoch {epoch}; submit a job first")
        start = time.perf_counter()
        value = entry[1].result()
        return value, time.perf_counter() - start

    def close(self) -> None:
        """Stop taking jobs; the job in progress finishes on its thread, queued ones are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> SelectionPipeline[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProxyExporter:
    """Serializes the live model as a proxy (on a CPU copy; the model being trained is untouched)."""

    def __init__(self, model: nn.Module, decoder: SampleDecoder, quantize: str | None) -> None:
        self.model = model
        self.decoder = decoder
        self.quantize = quantize

    def __call__(self, version: int) -> bytes:
        """The proxy of the model as it is now, as ``version``."""
        from nessa.proxy import dumps, export

        snapshot = copy.deepcopy(self.model).cpu()
        proxy = export(
            snapshot,
            self.decoder.example_input(),
            quantize=self.quantize,
            version=version,
            normalization=self.decoder.normalization,
            image=self.decoder.image,
        )
        return dumps(proxy)
