"""The contract of a data-path stage: an iterator that can say where it is and start again from there."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Stage", "StageState"]

T = TypeVar("T")
#: ``{"position": samples consumed downstream of the stage}`` (stages may add keys of their own).
StageState = dict[str, Any]


class Stage(ABC, Generic[T], Iterator[T]):
    """One step of the data path (torchdata's ``BaseNode`` shape, reduced to what NeSSA needs).

    ``load_state_dict`` is called before the first ``next``; ``state_dict`` may be called at any time and describes
    the position right after the last item this stage handed out.
    """

    def __iter__(self) -> Stage[T]:
        return self

    @abstractmethod
    def __next__(self) -> T: ...

    @abstractmethod
    def state_dict(self) -> StageState:
        """Where this stage is: loading it into a fresh chain resumes right after the last item handed out."""

    @abstractmethod
    def load_state_dict(self, state: StageState) -> None:
        """Resume from :meth:`state_dict` (before iterating)."""

    def close(self) -> None:
        """Release what the stage holds (threads, streams); idempotent."""

    def __enter__(self) -> Stage[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
