"""Apply a function to every item (e.g. stored bytes → tensors); the position passes through unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from nessa.pipeline.base import Stage, StageState

__all__ = ["Decode"]

T = TypeVar("T")


class Decode(Stage[T]):
    """``fn(item)`` for every item of ``upstream``."""

    def __init__(self, upstream: Stage[Any], fn: Callable[[Any], T]) -> None:
        self.upstream = upstream
        self.fn = fn

    def __next__(self) -> T:
        return self.fn(next(self.upstream))

    def state_dict(self) -> StageState:
        """The upstream's state."""
        return self.upstream.state_dict()

    def load_state_dict(self, state: StageState) -> None:
        """Resume the upstream."""
        self.upstream.load_state_dict(state)

    def close(self) -> None:
        """Close the upstream."""
        self.upstream.close()
