"""Stored sample bytes → the model's input tensors, with the arithmetic the proxy applies next to the data.

PNG/JPEG samples are decoded with the proxy's :class:`~nessa.store.images.ImagePrep` (the daemon runs the same
decode before the proxy). For the ``raw`` codec a sample is a C-ordered ndarray of the dataset's ``sample_shape`` and
``dtype``;
:class:`SampleDecoder` lays it out for one model family and scales it (``1/255`` for uint8) exactly as the proxy's
:class:`nessa.proxy.format.Normalization` does, so the trainer's model and the daemon's proxy see identical inputs.
:meth:`SampleDecoder.batch` is the decode stage of the data path (:mod:`nessa.pipeline`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nessa.client import DatasetInfo
from nessa.errors import InvalidArgumentError
from nessa.packed import PackedSamples
from nessa.pipeline.rebatch import SampleBatch
from nessa.proxy.format import Normalization
from nessa.store.images import IMAGE_CODECS, ImagePrep, decode_images

__all__ = ["SampleDecoder", "TrainBatch"]

_SCALES = {"uint8": 1.0 / 255.0, "float32": 1.0}


@dataclass
class TrainBatch:
    """One training batch, decoded.

    Attributes:
        x: model inputs (on the CPU; the loop moves them).
        y: int64 labels.
        w: float32 per-sample weights.
        indices: dataset indices (numpy int64).
        payload_bytes: sample bytes these samples took on the wire.
    """

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    indices: np.ndarray
    payload_bytes: int

    def __len__(self) -> int:
        return len(self.indices)


class SampleDecoder:
    """Decodes a dataset's raw samples into inputs of one model family.

    Args:
        info: the dataset as the daemon describes it (codec must be ``raw``; dtype ``float32`` or ``uint8``).
        model: ``mlp`` (flat inputs), ``cnn1d`` (one signal per sample) or ``resnet20`` (images; ``(H, W, C)``
            samples are transposed to ``(C, H, W)``).

    Raises:
        InvalidArgumentError: an encoded codec, an unsupported dtype, or a sample shape the model cannot take.
    """

    def __init__(self, info: DatasetInfo, model: str, image: ImagePrep | None = None) -> None:
        self.image: ImagePrep | None = None
        if info.codec in IMAGE_CODECS:
            if image is None or image.shape is None:
                raise InvalidArgumentError(
                    f"dataset {info.name!r} stores {info.codec} images: give their size after decoding with "
                    "--image-size N (resize the shorter side to N, center-crop N x N; --image-mode L for grayscale)"
                )
            self.image = image
            dtype, sample_shape = "uint8", tuple(image.shape)
        elif info.codec != "raw":
            raise InvalidArgumentError(
                f"dataset {info.name!r} stores {info.codec!r} samples, which the trainer cannot decode: ingest "
                "arrays (e.g. from an .npz) or png/jpeg images"
            )
        else:
            dtype, sample_shape = info.dtype, tuple(int(d) for d in info.sample_shape)
        sample_shape = tuple(int(d) for d in sample_shape)
        if dtype not in _SCALES:
            raise InvalidArgumentError(
                f"dataset {info.name!r} has dtype {dtype!r}; the trainer and proxy take float32 or uint8 samples "
                "(re-ingest with --dtype float32)"
            )
        self.info = info
        self.model = model
        self.dtype_name = dtype
        self.dtype = np.dtype(dtype)
        self.sample_shape = sample_shape
        self.scale = _SCALES[dtype]
        self.sample_nbytes = int(math.prod(self.sample_shape)) * self.dtype.itemsize
        shape = self.sample_shape
        self._transpose = False
        if model == "resnet20" or (":" in model and len(shape) in (2, 3)):
            if len(shape) == 2:
                self.input_shape: tuple[int, ...] = (1, *shape)
            elif len(shape) == 3 and shape[0] not in (1, 3) and shape[2] in (1, 3):
                self.input_shape, self._transpose = (shape[2], shape[0], shape[1]), True
            elif len(shape) == 3:
                self.input_shape = shape
            else:
                raise InvalidArgumentError(
                    f"resnet20 needs image samples (H, W), (C, H, W) or (H, W, C); dataset {info.name!r} has {shape}"
                )
        elif model == "cnn1d":
            if len(shape) == 1:
                self.input_shape = shape
            elif len(shape) == 2 and shape[0] == 1:
                self.input_shape = (shape[1],)
            else:
                raise InvalidArgumentError(
                    f"cnn1d needs 1-D signals, (L,) or (1, L); dataset {info.name!r} has samples of shape {shape}"
                )
        elif model == "mlp":
            self.input_shape = (int(math.prod(shape)),)
        elif ":" in model:  # a user's model by import path: samples as stored (images channel-first, above)
            self.input_shape = shape
        else:
            raise InvalidArgumentError(
                f"no input layout for model {model!r}; choose mlp, cnn1d, resnet20 or a module:factory import path"
            )

    @property
    def normalization(self) -> Normalization:
        """The proxy's input normalization matching :meth:`decode`."""
        return Normalization(dtype=self.dtype_name, scale=self.scale)  # type: ignore[arg-type]

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`nessa.trainer.models.build_model` for this dataset."""
        classes = self.info.num_classes
        if ":" in self.model:  # offered to a user's factory; build_model passes those its signature takes
            channels = self.input_shape[0] if len(self.input_shape) == 3 else 1
            return {"num_classes": classes, "channels": channels, "in_channels": channels,
                    "input_shape": self.input_shape}  # fmt: skip
        if self.model == "resnet20":
            return {"num_classes": classes, "in_channels": self.input_shape[0]}
        if self.model == "cnn1d":
            return {"length": self.input_shape[0], "num_classes": classes}
        return {"in_features": self.input_shape[0], "num_classes": classes}

    def decode(self, samples: PackedSamples | Sequence[bytes]) -> torch.Tensor:
        """Stored bytes of ``len(samples)`` samples → float32 model inputs ``(N, *input_shape)``.

        Packed samples (as streamed) are read in place: the one copy is the conversion to float32. Images are
        decoded as the daemon decodes them before the proxy.
        """
        packed = samples if isinstance(samples, PackedSamples) else PackedSamples.from_samples(samples)
        n = len(packed)
        if self.image is not None:
            arr = decode_images(packed.tobytes_list(), self.image)  # the same decode the daemon runs
        else:
            joined = packed.contiguous()
            if len(joined) != n * self.sample_nbytes or (n and not (packed.sizes == self.sample_nbytes).all()):
                raise InvalidArgumentError(
                    f"received {len(joined)} bytes for {n} samples of {self.sample_nbytes} bytes each (dataset "
                    f"{self.info.name!r}); the daemon serves another layout than it describes — re-ingest the dataset"
                )
            arr = np.frombuffer(joined, dtype=self.dtype).reshape(n, *self.sample_shape)
        if self._transpose:
            arr = arr.transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.array(arr, dtype=np.float32, order="C")).reshape(n, *self.input_shape)
        if self.scale != 1.0:
            x = x * self.scale
        return x

    def batch(self, raw: SampleBatch) -> TrainBatch:
        """One batch of stored samples → a :class:`TrainBatch` (the data path's decode stage)."""
        return TrainBatch(
            x=self.decode(raw.samples),
            y=torch.from_numpy(np.asarray(raw.labels, dtype=np.int64)),
            w=torch.from_numpy(np.asarray(raw.weights, dtype=np.float32)),
            indices=raw.indices,
            payload_bytes=raw.payload_bytes,
        )

    def example_input(self) -> torch.Tensor:
        """A zero batch of one sample in the model's input layout (for proxy export)."""
        return torch.zeros((1, *self.input_shape), dtype=torch.float32)
