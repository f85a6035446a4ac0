"""From streamed sample bytes to model inputs: decoding, the input layout of each model, and training batches.

The storage daemon streams a sample's stored bytes. For the ``raw`` codec those are a C-ordered ndarray of the
dataset's ``sample_shape`` and ``dtype``; :class:`SampleDecoder` turns a list of them into the model's input
tensor with the same arithmetic the proxy applies next to the data (``x = raw * scale``, ``scale = 1/255`` for
uint8 samples, 1 otherwise; see :class:`nessa.proxy.format.Normalization`), so the trainer's model and the proxy
the daemon runs see identical inputs. :func:`rebatch` turns the daemon's messages (bounded in bytes) into training
batches of exactly ``batch_size`` samples (the last one may be shorter).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nessa.client import Batch, DatasetInfo
from nessa.errors import InvalidArgumentError
from nessa.proxy.format import Normalization

__all__ = ["SampleDecoder", "TrainBatch", "rebatch"]

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

    def __init__(self, info: DatasetInfo, model: str) -> None:
        if info.codec != "raw":
            raise InvalidArgumentError(
                f"dataset {info.name!r} stores {info.codec!r} samples; the trainer reads raw arrays only: ingest the "
                "samples as arrays (e.g. from an .npz) so the trainer and the proxy decode them the same way"
            )
        if info.dtype not in _SCALES:
            raise InvalidArgumentError(
                f"dataset {info.name!r} has dtype {info.dtype!r}; the trainer and proxy take float32 or uint8 samples"
            )
        self.info = info
        self.model = model
        self.dtype = np.dtype(info.dtype)
        self.sample_shape = tuple(int(d) for d in info.sample_shape)
        self.scale = _SCALES[info.dtype]
        self.sample_nbytes = int(math.prod(self.sample_shape)) * self.dtype.itemsize
        shape = self.sample_shape
        self._transpose = False
        if model == "resnet20":
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
        else:
            raise InvalidArgumentError(f"no input layout for model {model!r}; choose mlp, cnn1d or resnet20")

    @property
    def normalization(self) -> Normalization:
        """The proxy's input normalization matching :meth:`decode`."""
        return Normalization(dtype=self.info.dtype, scale=self.scale)  # type: ignore[arg-type]

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`nessa.trainer.models.build_model` for this dataset."""
        classes = self.info.num_classes
        if self.model == "resnet20":
            return {"num_classes": classes, "in_channels": self.input_shape[0]}
        if self.model == "cnn1d":
            return {"length": self.input_shape[0], "num_classes": classes}
        return {"in_features": self.input_shape[0], "num_classes": classes}

    def decode(self, samples: list[bytes]) -> torch.Tensor:
        """Stored bytes of ``len(samples)`` samples → float32 model inputs ``(N, *input_shape)``."""
        n = len(samples)
        joined = b"".join(samples)
        if len(joined) != n * self.sample_nbytes:
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

    def example_input(self) -> torch.Tensor:
        """A zero batch of one sample in the model's input layout (for proxy export)."""
        return torch.zeros((1, *self.input_shape), dtype=torch.float32)


def rebatch(batches: Iterable[Batch], batch_size: int, decoder: SampleDecoder) -> Iterator[TrainBatch]:
    """Regroup streamed batches into training batches of ``batch_size`` samples and decode them.

    Args:
        batches: the client's stream.
        batch_size: samples per training batch (the last one may be shorter).
        decoder: turns stored bytes into inputs.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch size must be >= 1; got {batch_size}")
    idx: list[np.ndarray] = []
    lab: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    data: list[bytes] = []
    payload = 0
    held = 0

    def emit(count: int) -> TrainBatch:
        nonlocal idx, lab, wts, data, payload, held
        i, y, w = np.concatenate(idx), np.concatenate(lab), np.concatenate(wts)
        take_bytes = sum(len(s) for s in data[:count])
        out = TrainBatch(
            x=decoder.decode(data[:count]),
            y=torch.from_numpy(y[:count].copy()),
            w=torch.from_numpy(w[:count].astype(np.float32, copy=True)),
            indices=i[:count].copy(),
            payload_bytes=take_bytes,
        )
        idx, lab, wts, data = [i[count:]], [y[count:]], [w[count:]], data[count:]
        payload -= take_bytes
        held -= count
        return out

    for b in batches:
        if len(b) == 0:
            continue
        idx.append(b.indices)
        lab.append(b.labels)
        wts.append(b.weights)
        data.extend(b.samples)
        payload += sum(len(s) for s in b.samples)
        held += len(b)
        while held >= batch_size:
            yield emit(batch_size)
    if held > 0:
        yield emit(held)
