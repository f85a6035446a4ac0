"""Small-image augmentations for (N, C, H, W) float32 batches in [0, 1] (CIFAR/digits recipes, no torchvision)."""

from __future__ import annotations

import numpy as np

from nessa.augment.base import Transform

__all__ = ["BrightnessContrast", "PadCrop", "Rotate"]


def _check(x: np.ndarray) -> None:
    if x.ndim != 4:
        raise ValueError(f"image transforms expect shape (N, C, H, W); got {x.shape}")


class PadCrop(Transform):
    """Zero-pad by ``padding`` and crop back to H x W at a random offset (``RandomCrop(32, padding=4)``)."""

    name = "pad-crop"

    def __init__(self, padding: int = 2) -> None:
        self.padding = padding

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        n, _, h, w = x.shape
        p = self.padding
        padded: np.ndarray = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        dy = np.asarray(rng.integers(0, 2 * p + 1, size=n))
        dx = np.asarray(rng.integers(0, 2 * p + 1, size=n))
        return np.stack([padded[i, :, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w] for i in range(n)])


class Rotate(Transform):
    """Rotate about the centre by an angle in [-max_degrees, max_degrees], bilinear, zero fill."""

    name = "rotate"

    def __init__(self, max_degrees: float = 10.0) -> None:
        self.max_degrees = max_degrees

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        n, c, h, w = x.shape
        theta = np.deg2rad(rng.uniform(-self.max_degrees, self.max_degrees, size=n))
        yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
        out = np.empty_like(x)
        for i in range(n):
            cos, sin = np.cos(theta[i]), np.sin(theta[i])
            sy = cos * yy - sin * xx + (h - 1) / 2
            sx = sin * yy + cos * xx + (w - 1) / 2
            y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
            fy, fx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
            acc = np.zeros((c, h, w), dtype=np.float32)
            for oy, ox, wt in (
                (0, 0, (1 - fy) * (1 - fx)),
                (0, 1, (1 - fy) * fx),
                (1, 0, fy * (1 - fx)),
                (1, 1, fy * fx),
            ):
                yi, xi = y0 + oy, x0 + ox
                ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
                acc += np.where(ok, x[i][:, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0.0) * wt
            out[i] = acc
        return np.clip(out, 0.0, 1.0)


class BrightnessContrast(Transform):
    """Add brightness in [-b, b] and scale contrast about the image mean by [1-c, 1+c]; clip to [0, 1]."""

    name = "brightness-contrast"

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2) -> None:
        self.brightness, self.contrast = brightness, contrast

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        n = x.shape[0]
        b = rng.uniform(-self.brightness, self.brightness, size=(n, 1, 1, 1)).astype(np.float32)
        k = rng.uniform(1 - self.contrast, 1 + self.contrast, size=(n, 1, 1, 1)).astype(np.float32)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return np.clip((x - mean) * k + mean + b, 0.0, 1.0).astype(np.float32)
