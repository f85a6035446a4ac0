"""Decode stored PNG/JPEG samples into uint8 arrays, with the preprocessing a proxy declares.

The daemon (before the proxy) and the trainer (before the model) call the same :func:`decode_images` with the same
:class:`ImagePrep`, so both see identical pixels: convert to ``mode``, resize so the shorter side is ``resize``
(bilinear), center-crop to ``height x width``. The result is ``(N, H, W, C)`` uint8; the proxy's
:class:`~nessa.proxy.format.Normalization` (``scale=1/255``, mean, std) then applies as for raw uint8 images.

Needs Pillow (imported on first use).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nessa.errors import DataCorruptionError, InvalidArgumentError

__all__ = ["IMAGE_CODECS", "ImagePrep", "decode_image", "decode_images"]

#: Codecs whose samples are encoded images this module decodes.
IMAGE_CODECS = ("png", "jpeg")
_MODES = {"RGB": 3, "L": 1}


@dataclass(frozen=True)
class ImagePrep:
    """How an encoded image becomes a uint8 ``(H, W, C)`` array.

    Attributes:
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grayscale, 1 channel).
        resize: the shorter side after a bilinear resize (0: keep the stored size).
        height: center-crop height (0: no crop; set with ``width``).
        width: center-crop width.
    """

    mode: str = "RGB"
    resize: int = 0
    height: int = 0
    width: int = 0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise InvalidArgumentError(f"image mode {self.mode!r} is not supported; use 'RGB' or 'L'")
        if min(self.resize, self.height, self.width) < 0 or (self.height == 0) != (self.width == 0):
            raise InvalidArgumentError(
                f"image resize/height/width must be >= 0, and height and width set together; got {self}"
            )

    @property
    def channels(self) -> int:
        """Channels of the decoded array."""
        return _MODES[self.mode]

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """``(H, W, C)`` of every decoded image, when a crop fixes it."""
        return (self.height, self.width, self.channels) if self.height else None

    @classmethod
    def from_message(cls, msg: Any) -> ImagePrep | None:
        """From a ``nessa.v1.ImagePrep`` (``None`` when unset)."""
        if not msg.mode:
            return None
        return cls(mode=str(msg.mode), resize=int(msg.resize), height=int(msg.height), width=int(msg.width))

    def to_message(self, msg: Any) -> None:
        """Fill a ``nessa.v1.ImagePrep``."""
        msg.mode, msg.resize, msg.height, msg.width = self.mode, self.resize, self.height, self.width


def decode_image(data: bytes, prep: ImagePrep | None = None) -> np.ndarray:
    """One encoded image → ``(H, W, C)`` uint8 after ``prep`` (default: RGB at the stored size).

    Raises:
        DataCorruptionError: the bytes are not a decodable image.
        InvalidArgumentError: the crop is larger than the (resized) image.
    """
    from PIL import Image

    p = prep or ImagePrep()
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            im = img.convert(p.mode)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataCorruptionError(f"a stored image does not decode ({type(exc).__name__}: {exc})") from exc
    if p.resize:
        w, h = im.size
        s = p.resize / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    if p.height:
        w, h = im.size
        if p.height > h or p.width > w:
            raise InvalidArgumentError(
                f"cannot center-crop {p.height}x{p.width} from an image of {h}x{w}; set a larger resize or a "
                "smaller crop"
            )
        top, left = (h - p.height) // 2, (w - p.width) // 2
        im = im.crop((left, top, left + p.width, top + p.height))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(values: Sequence[bytes], prep: ImagePrep | None = None) -> np.ndarray:
    """Encoded images → ``(N, H, W, C)`` uint8 (every image must come out the same size).

    Raises:
        InvalidArgumentError: images of different sizes without a crop that evens them out.
    """
    arrays = [decode_image(v, prep) for v in values]
    if not arrays:
        c = (prep or ImagePrep()).channels
        return np.zeros((0, 0, 0, c), np.uint8)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InvalidArgumentError(
            f"the images decode to different sizes {sorted(shapes)[:3]}; declare a resize and center crop "
            "(export(..., image=ImagePrep(resize=..., height=..., width=...)) or --image-size)"
        )
    return np.stack(arrays)
