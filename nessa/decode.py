"""Stored samples → float32 model inputs, the way the daemon feeds the proxy: :class:`InputDecoder`.

Raw arrays are read as stored (channel-last ``(H, W, C)`` images made channel-first), PNG/JPEG samples decoded with
an :class:`~nessa.store.images.ImagePrep` (the same decode the daemon runs before the proxy), uint8 scaled by 1/255,
then normalized by ``mean``/``std``: exactly the proxy's :class:`~nessa.proxy.format.Normalization`, which
:attr:`InputDecoder.normalization` returns. Used by :class:`nessa.Selector` and :class:`nessa.data.DecodeSample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nessa.client import DatasetInfo
from nessa.errors import InvalidArgumentError
from nessa.store.images import IMAGE_CODECS, ImagePrep, decode_images

__all__ = ["InputDecoder"]

_SCALES = {"uint8": 1.0 / 255.0, "float32": 1.0}


class InputDecoder:
    """Decodes one dataset's stored samples.

    Args:
        info: the dataset as the daemon describes it (:meth:`nessa.client.StorageClient.describe`).
        image_size: png/jpeg datasets: resize the shorter side and center-crop square to this (required there).
        image_mode: ``RGB`` or ``L``.
        mean: normalization mean (one value or one per channel), after the 1/255 scale of uint8 samples.
        std: normalization std.

    Raises:
        InvalidArgumentError: an image dataset without ``image_size``, opaque bytes, or a dtype other than
            float32/uint8.
    """

    def __init__(
        self,
        info: DatasetInfo,
        image_size: int = 0,
        image_mode: str = "RGB",
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
    ) -> None:
        self.info = info
        self.image = ImagePrep(image_mode, image_size, image_size, image_size) if image_size else None
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(self.mean) != len(self.std):
            raise InvalidArgumentError("mean and std need the same length")
        if info.codec in IMAGE_CODECS:
            if self.image is None or self.image.shape is None:
                raise InvalidArgumentError(
                    f"dataset {info.name!r} stores {info.codec} images: pass image_size=N (resize and center-crop "
                    "to N x N, the same decode the daemon runs before the proxy)"
                )
            self.dtype, shape = "uint8", tuple(self.image.shape)
        elif info.codec == "raw":
            self.dtype, shape = info.dtype, tuple(int(d) for d in info.sample_shape)
        else:
            raise InvalidArgumentError(f"dataset {info.name!r} stores {info.codec!r} samples, which are not decoded")
        if self.dtype not in _SCALES:
            raise InvalidArgumentError(
                f"dataset {info.name!r} has dtype {self.dtype!r}; use float32 or uint8 samples (ingest --dtype float32)"
            )
        self.sample_shape: tuple[int, ...] = shape
        self.transpose = len(shape) == 3 and shape[2] in (1, 3) and shape[0] not in (1, 3)
        self.input_shape: tuple[int, ...] = (shape[2], shape[0], shape[1]) if self.transpose else shape

    @property
    def normalization(self) -> Any:
        """The proxy's :class:`~nessa.proxy.format.Normalization` matching :meth:`decode`."""
        from nessa.proxy.format import Normalization

        return Normalization(mean=self.mean, std=self.std, dtype=self.dtype, scale=_SCALES[self.dtype])  # type: ignore[arg-type]

    def decode(self, samples: Sequence[bytes] | Sequence[memoryview]) -> Any:
        """Stored bytes of ``len(samples)`` samples → a float32 tensor ``(N, *input_shape)``."""
        import torch

        if self.image is not None:
            arr = decode_images([bytes(v) for v in samples], self.image)
        else:
            arr = np.frombuffer(b"".join(samples), dtype=np.dtype(self.dtype)).reshape(-1, *self.sample_shape)
        if self.transpose:
            arr = arr.transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.array(arr, dtype=np.float32, order="C")) * _SCALES[self.dtype]
        if self.mean:
            bshape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - torch.tensor(self.mean).reshape(bshape)) / torch.tensor(self.std).reshape(bshape)
        return x
