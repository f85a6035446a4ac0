"""Small generated PNG image folders (``root/<class>/<i>.png``) for the image and own-model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("blue", "green", "red")


def make_png_folder(root: Path, per_class: int, size: int = 16, seed: int = 0, vary: bool = False) -> Path:
    """Write ``per_class`` noisy RGB images per class, each class brightest in its own channel; returns ``root``.

    ``vary``: images of different sizes (``size`` to ``size + 7`` pixels a side), for resize and crop.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h = size + (int(rng.integers(0, 8)) if vary else 0)
            w = size + (int(rng.integers(0, 8)) if vary else 0)
            img = rng.integers(0, 90, size=(h, w, 3))
            img[:, :, 2 - c] += 150  # blue, green, red: channel 2, 1, 0
            Image.fromarray(img.astype(np.uint8), "RGB").save(folder / f"{i:03d}.png")
    return root
