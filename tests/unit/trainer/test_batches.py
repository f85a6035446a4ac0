"""Tests of nessa.trainer.batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nessa.client import DatasetInfo
from nessa.errors import InvalidArgumentError
from nessa.trainer.batches import SampleDecoder


def _info(shape: tuple[int, ...], dtype: str, codec: str = "raw", classes: int = 10) -> DatasetInfo:
    return DatasetInfo(
        name="d",
        num_samples=10,
        num_classes=classes,
        class_names=(),
        class_counts=(),
        codec=codec,
        sample_shape=shape,
        dtype=dtype,
        total_bytes=0,
        num_shards=1,
        proxy_version=None,
    )


def test_decoder_matches_the_proxy_normalisation_and_layouts() -> None:
    x = np.arange(2 * 40, dtype=np.float32).reshape(2, 40)
    dec = SampleDecoder(_info((40,), "float32"), "cnn1d")
    out = dec.decode([x[0].tobytes(), x[1].tobytes()])
    assert torch.equal(out, torch.from_numpy(x))
    assert dec.model_kwargs() == {"length": 40, "num_classes": 10}
    assert dec.normalization.scale == 1.0

    img = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    dec = SampleDecoder(_info((8, 8, 3), "uint8"), "resnet20")
    out = dec.decode([img[0].tobytes(), img[1].tobytes()])
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out, torch.from_numpy(img.transpose(0, 3, 1, 2).astype(np.float32)) / 255.0)
    assert dec.model_kwargs() == {"num_classes": 10, "in_channels": 3}
    assert dec.normalization.scale == pytest.approx(1 / 255)

    dec = SampleDecoder(_info((3, 4, 4), "uint8"), "mlp")
    assert dec.decode([bytes(48)]).shape == (1, 48)
    with pytest.raises(InvalidArgumentError, match="re-ingest"):
        dec.decode([bytes(47)])


@pytest.mark.parametrize(
    ("info", "model", "match"),
    [
        (_info((32, 32, 3), "uint8", codec="png"), "resnet20", "--image-size N"),
        (_info((32, 32, 3), "uint8", codec="bytes"), "resnet20", "cannot decode"),
        (_info((40,), "float64"), "cnn1d", "float32 or uint8"),
        (_info((3, 8, 8), "float32"), "cnn1d", "1-D signals"),
        (_info((40,), "float32"), "resnet20", "image samples"),
    ],
)
def test_decoder_rejects_what_it_cannot_feed_the_model(info: DatasetInfo, model: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        SampleDecoder(info, model)
