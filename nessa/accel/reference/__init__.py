"""Numpy reference implementations of every accelerator op (the oracle for tests; ``backend="numpy"``)."""

from __future__ import annotations

from nessa.accel.reference.nn import *  # noqa: F403
from nessa.accel.reference.nn import __all__ as _nn_all
from nessa.accel.reference.selection import *  # noqa: F403
from nessa.accel.reference.selection import __all__ as _selection_all

__all__ = [*_nn_all, *_selection_all]
