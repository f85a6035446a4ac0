"""Numpy reference of the selection ops (distances, facility-location gains, assignment, top-k)."""

from __future__ import annotations

__all__: list[str] = []
