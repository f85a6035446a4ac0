"""1-D signal augmentations for (N, L) float32 batches, mirroring MNIST-1D's generator nuisances.

MNIST-1D (Greydanus & Kobak, 2020, ``mnist1d/transform.py``) makes each sample by padding, shearing (linear trend),
scaling, shifting circularly, adding correlated (smoothed) and iid Gaussian noise, then interpolating to length L.
Each transform here is one of those steps, applied to an already generated signal; none reverses time.
"""

from __future__ import annotations

import numpy as np

from nessa.augment.base import Transform

__all__ = ["AmplitudeScale", "CircularShift", "CropStretch", "GaussianNoise", "TrendShear"]


def _check(x: np.ndarray) -> None:
    if x.ndim != 2:
        raise ValueError(f"1-D signal transforms expect shape (N, L); got {x.shape}")


class CropStretch(Transform):
    """Random window of ``scale`` in [min_scale, 1] of the length, stretched back to L by linear interpolation."""

    name = "crop-stretch"

    def __init__(self, min_scale: float = 0.8) -> None:
        self.min_scale = min_scale

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        n, length = x.shape
        scale = np.asarray(rng.uniform(self.min_scale, 1.0, size=n))
        start = np.asarray(rng.uniform(0.0, 1.0, size=n) * (1.0 - scale) * (length - 1))
        grid = np.linspace(0.0, 1.0, length)
        pos = start[:, None] + grid[None, :] * scale[:, None] * (length - 1)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, length - 1)
        hi = np.clip(lo + 1, 0, length - 1)
        frac = (pos - lo).astype(np.float32)
        rows = np.arange(n)[:, None]
        return (x[rows, lo] * (1.0 - frac) + x[rows, hi] * frac).astype(np.float32)


class CircularShift(Transform):
    """Roll each signal by an integer in [-max_shift, max_shift] (MNIST-1D ``shift``, wrap-around)."""

    name = "shift"

    def __init__(self, max_shift: int = 5) -> None:
        self.max_shift = max_shift

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        n, length = x.shape
        shift = np.asarray(rng.integers(-self.max_shift, self.max_shift + 1, size=n))
        idx = (np.arange(length)[None, :] - shift[:, None]) % length
        return x[np.arange(n)[:, None], idx]


class AmplitudeScale(Transform):
    """Multiply each signal by a factor in [low, high] (MNIST-1D ``scale_coeff``)."""

    name = "scale"

    def __init__(self, low: float = 0.8, high: float = 1.2) -> None:
        self.low, self.high = low, high

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        return (x * rng.uniform(self.low, self.high, size=(x.shape[0], 1))).astype(np.float32)


class TrendShear(Transform):
    """Add a linear trend of slope in [-max_slope, max_slope] over [0, 1], zero-mean (MNIST-1D ``shear``)."""

    name = "shear"

    def __init__(self, max_slope: float = 0.5) -> None:
        self.max_slope = max_slope

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        ramp = np.linspace(-0.5, 0.5, x.shape[1], dtype=np.float32)
        slope = rng.uniform(-self.max_slope, self.max_slope, size=(x.shape[0], 1)).astype(np.float32)
        return (x + slope * ramp[None, :]).astype(np.float32)


class GaussianNoise(Transform):
    """Correlated noise (iid noise smoothed by a box filter of ``corr_width``) plus iid Gaussian noise.

    Standard deviations are relative to each signal's own standard deviation, like MNIST-1D's
    ``corr_noise_scale`` (0.25) and ``iid_noise_scale`` (2e-2) relative to its unit-scale templates.
    """

    name = "noise"

    def __init__(self, corr_std: float = 0.1, iid_std: float = 0.02, corr_width: int = 5) -> None:
        self.corr_std, self.iid_std, self.corr_width = corr_std, iid_std, corr_width

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment the batch ``x`` with randomness from ``rng``."""
        _check(x)
        n, length = x.shape
        sd = x.std(axis=1, keepdims=True) + 1e-6
        raw = rng.standard_normal((n, length + self.corr_width - 1))
        kernel = np.ones(self.corr_width) / np.sqrt(self.corr_width)
        corr = np.stack([np.convolve(r, kernel, mode="valid") for r in raw])
        iid = rng.standard_normal((n, length))
        return (x + sd * (self.corr_std * corr + self.iid_std * iid)).astype(np.float32)
