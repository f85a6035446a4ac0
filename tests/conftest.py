"""Shared fixtures. Keep this file small: fixtures used by one test module belong in that module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def small_dataset(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray, np.ndarray]]:
    """Factory: ingest a small random raw dataset; returns ``(path, x, y)``.

    Keyword arguments: ``n`` samples (200), per-sample ``shape`` ((3, 4, 4)), ``dtype`` (uint8), ``shards`` (2),
    ``classes`` (5), ``name`` ("ds"), ``seed`` (0).
    """
    from nessa.store import ingest_arrays

    def make(
        n: int = 200,
        shape: tuple[int, ...] = (3, 4, 4),
        dtype: str = "uint8",
        shards: int = 2,
        classes: int = 5,
        name: str = "ds",
        seed: int = 0,
    ) -> tuple[Path, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = (rng.random((n, *shape)) * 200).astype(dtype)
        y = rng.integers(0, classes, size=n)
        dest = tmp_path / name
        ingest_arrays(x, y, dest, shards=shards, class_names=[f"c{i}" for i in range(classes)])
        return dest, x, y

    return make
