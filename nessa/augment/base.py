"""Transform base: seeded, batched, numpy or CPU torch in, the same kind out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Compose", "Transform", "as_generator"]


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a generator, a seed or ``None`` (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class Transform:
    """A label-preserving batch augmentation; subclasses implement :meth:`apply` on float32 numpy arrays."""

    name: str = ""

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment a float32 batch ``x``; draw all randomness from ``rng``."""
        raise NotImplementedError

    def __call__(self, x: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Augment ``x`` (numpy array or CPU torch tensor); return the same kind, float32, same shape."""
        gen = as_generator(rng)
        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None  # type: ignore[assignment]
        if torch is not None and isinstance(x, torch.Tensor):
            out = self.apply(x.detach().cpu().numpy().astype(np.float32, copy=False), gen)
            return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        return np.ascontiguousarray(self.apply(np.asarray(x, dtype=np.float32), gen), dtype=np.float32)


class Compose(Transform):
    """Apply transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Transform], name: str = "") -> None:
        self.transforms = list(transforms)
        self.name = name or "+".join(t.name for t in self.transforms)

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        for t in self.transforms:
            x = t.apply(x, rng)
        return x
