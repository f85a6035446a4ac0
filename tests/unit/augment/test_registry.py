"""nessa.augment: shape, dtype, determinism, seeds differ, label preservation, no time reversal, image range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nessa.augment as aug

SIGNAL = ["signal-weak", "signal-strong", "crop-stretch", "shift", "scale", "shear", "noise"]
IMAGE = ["image-weak", "image-strong", "pad-crop", "rotate", "brightness-contrast"]


def _signals() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 40)).astype(np.float32)


def _images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (8, 3, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("name", SIGNAL + IMAGE)
def test_shape_dtype_determinism_and_seeds(name: str) -> None:
    x = _signals() if name in SIGNAL else _images()
    t = aug.get(name)
    a, b, c = t(x, 1), t(x, np.random.default_rng(1)), t(x, 2)
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, x)
    out = t(torch.from_numpy(x), 1)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), a)


@pytest.mark.parametrize("name", IMAGE)
def test_image_values_stay_in_range(name: str) -> None:
    out = aug.get(name)(_images(), 3)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_no_time_reversal_ramp_stays_increasing() -> None:
    ramp = np.tile(np.linspace(-1, 1, 40, dtype=np.float32), (200, 1))
    out = aug.get("signal-strong")(ramp, 0)
    # circular shift wraps a few points, so compare halves: a reversal would make the first half larger
    assert (out[:, 20:].mean(axis=1) > out[:, :20].mean(axis=1)).mean() > 0.95


def test_unknown_name_lists_known() -> None:
    with pytest.raises(KeyError, match="signal-strong"):
        aug.get("nope")


def test_label_preservation_mnist1d() -> None:
    """A nearest-class-mean classifier keeps >= 80 % of its clean accuracy on signal-weak copies; reversal does not.

    Nearest-class-mean is weak on MNIST-1D (about 34 % on 1,000 samples) and shift-sensitive, so agreement with its
    own predictions is a poor measure; accuracy against the true labels is the label-preservation check. 80 %: the
    weak recipe keeps about 88 % at seed 0, time reversal (label-destroying here) about 69 %, so the threshold
    separates the two; amplitude scale, noise and shear, which NCM is nearly invariant to, keep >= 85 % of its own
    predictions.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 1000
    data = make_dataset(args)
    x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"])
    means = np.stack([x[y == k].mean(0) for k in range(10)])

    def predict(z: np.ndarray) -> np.ndarray:
        return np.argmin(((z[:, None, :] - means[None]) ** 2).sum(-1), axis=1)

    clean = (predict(x) == y).mean()
    weak = (predict(aug.get("signal-weak")(x, 0)) == y).mean()
    reversed_acc = (predict(x[:, ::-1].copy()) == y).mean()
    assert weak >= 0.8 * clean
    assert reversed_acc < 0.8 * clean
    for name in ("scale", "noise", "shear"):
        assert (predict(aug.get(name)(x, 0)) == predict(x)).mean() >= 0.85, name
