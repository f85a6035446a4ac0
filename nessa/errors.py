"""Domain errors shared by every part of NeSSA.

Each error class names the gRPC status code it maps to (as a string, so that ``nessa`` code that does not
speak gRPC need not import it); the storage daemon turns them into statuses in one place. Errors for bad
input subclass :class:`ValueError` so library users can catch them the ordinary way. Messages say what is
wrong *and* what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BusyError",
    "DataCorruptionError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NessaError",
    "NotFoundError",
    "OutOfRangeError",
    "ResourceExhaustedError",
]


class NessaError(Exception):
    """Base class of every NeSSA error; ``status`` is the gRPC status code name it maps to."""

    status: str = "INTERNAL"


class InvalidArgumentError(NessaError, ValueError):
    """A malformed request or input, whatever the state (bad fraction, shape, unknown method or option)."""

    status = "INVALID_ARGUMENT"


class NotFoundError(NessaError, LookupError):
    """Something named does not exist (a dataset, a selection id, a source path)."""

    status = "NOT_FOUND"


class FailedPreconditionError(NessaError, RuntimeError):
    """The request is valid but the state is not (no proxy pushed yet, destination exists)."""

    status = "FAILED_PRECONDITION"


class OutOfRangeError(NessaError, IndexError):
    """An index or cursor past the end."""

    status = "OUT_OF_RANGE"


class ResourceExhaustedError(NessaError, RuntimeError):
    """Over a configured limit (message size, memory, concurrent selections)."""

    status = "RESOURCE_EXHAUSTED"


class BusyError(ResourceExhaustedError):
    """Every slot of a limit on work in progress is taken (concurrent calls, streams, selections): retry later."""


class DataCorruptionError(NessaError, RuntimeError):
    """Stored data does not match its manifest (a corrupt, truncated or missing shard)."""

    status = "DATA_LOSS"
