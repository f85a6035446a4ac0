"""Named, seeded, label-preserving batch augmentations for 1-D signals and small images (numpy/torch CPU)."""

from nessa.augment.base import Compose, Transform, as_generator
from nessa.augment.registry import available, get, register

__all__ = ["Compose", "Transform", "as_generator", "available", "get", "register"]
