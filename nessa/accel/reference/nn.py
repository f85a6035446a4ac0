"""Numpy reference of the proxy (neural-network) ops."""

from __future__ import annotations

__all__: list[str] = []
