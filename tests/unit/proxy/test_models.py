"""The trainer's model definitions: shapes, defaults for MNIST-1D and CIFAR-10, build_model by name."""

from __future__ import annotations

import pytest
import torch

from nessa.errors import InvalidArgumentError
from nessa.trainer.models import MODELS, build_model, cnn1d, mlp, resnet20


def test_default_shapes() -> None:
    with torch.no_grad():
        assert mlp()(torch.zeros(3, 40)).shape == (3, 10)
        assert cnn1d()(torch.zeros(3, 40)).shape == (3, 10)  # stored MNIST-1D samples
        assert cnn1d()(torch.zeros(3, 1, 40)).shape == (3, 10)
        assert resnet20().eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_size_and_shortcuts() -> None:
    model = resnet20()
    params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < params < 0.29e6  # ResNet-20: ~0.27 M parameters
    shortcuts = [m for m in model.modules() if isinstance(m, torch.nn.Sequential) and len(m) == 2]
    assert len(shortcuts) == 2  # 1x1 conv + BN projection where the shape changes (stages 2 and 3)


def test_build_model_by_name() -> None:
    assert set(MODELS) == {"mlp", "cnn1d", "resnet20"}
    m = build_model("resnet20", num_classes=100, width=8, in_channels=1)
    with torch.no_grad():
        assert m.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 100)
    assert build_model("cnn1d", length=64, num_classes=4)(torch.zeros(2, 64)).shape == (2, 4)
    assert build_model("mlp", in_features=7, hidden=(5,))(torch.zeros(2, 7)).shape == (2, 10)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("vgg", {}, "unknown model 'vgg'; choose one of: cnn1d, mlp, resnet20"),
        ("mlp", {"depth": 3}, "bad arguments for model 'mlp'"),
        ("mlp", {"num_classes": 0}, "positive"),
        ("cnn1d", {"length": 2}, "length >= 4"),
        ("resnet20", {"width": 0}, "positive"),
    ],
)
def test_build_model_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        build_model(name, **kwargs)
