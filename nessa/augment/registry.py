"""Augmentations by name: single transforms and the weak/strong recipes, created fresh per lookup."""

from __future__ import annotations

from collections.abc import Callable

from nessa.augment.base import Compose, Transform
from nessa.augment.image import BrightnessContrast, PadCrop, Rotate
from nessa.augment.signal import AmplitudeScale, CircularShift, CropStretch, GaussianNoise, TrendShear

__all__ = ["available", "get", "register"]

_REGISTRY: dict[str, Callable[[], Transform]] = {}


def register(name: str, factory: Callable[[], Transform]) -> None:
    """Make ``factory`` available as ``get(name)``; a taken name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"augmentation {name!r} is already registered")
    _REGISTRY[name] = factory


def get(name: str) -> Transform:
    """A new transform by name; an unknown name raises ``KeyError`` listing the known ones."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown augmentation {name!r}; known: {', '.join(available())}") from None


def available() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


for _cls in (
    CropStretch,
    CircularShift,
    AmplitudeScale,
    TrendShear,
    GaussianNoise,
    PadCrop,
    Rotate,
    BrightnessContrast,
):
    register(_cls.name, _cls)

register(
    "signal-weak",
    lambda: Compose([CircularShift(3), AmplitudeScale(0.9, 1.1), GaussianNoise(0.05, 0.01)], "signal-weak"),
)
register(
    "signal-strong",
    lambda: Compose(
        [CropStretch(0.75), CircularShift(8), AmplitudeScale(0.7, 1.3), TrendShear(0.8), GaussianNoise(0.2, 0.05)],
        "signal-strong",
    ),
)
register("image-weak", lambda: Compose([PadCrop(2), BrightnessContrast(0.1, 0.1)], "image-weak"))
register("image-strong", lambda: Compose([PadCrop(4), Rotate(10.0), BrightnessContrast(0.3, 0.3)], "image-strong"))
