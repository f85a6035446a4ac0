"""Model definitions the trainer trains and exports as proxies.

Every model here uses only ops the proxy format can express (conv, linear, ReLU, add, pooling, flatten and
BatchNorm, which export folds into the preceding conv/linear), so :func:`nessa.proxy.export` accepts all of them.

Defaults fit the embedded datasets:

* :func:`mlp` and :func:`cnn1d`: MNIST-1D (40 float32 values per sample, 10 classes). :func:`mlp` takes
  ``(N, 40)``. :func:`cnn1d` takes ``(N, 1, 40)``: one channel of length 40, which is also the per-sample input
  shape of its proxy, ``(1, 40)``. The store keeps MNIST-1D samples as ``(40,)``; the proxy engines reshape stored
  samples to the proxy's input shape (same number of elements), and :func:`cnn1d` itself also accepts ``(N, 40)``
  (it reshapes its input to ``(N, 1, 40)`` first; export folds that reshape into the proxy's input shape).
* :func:`resnet20`: CIFAR-10 (3×32×32, 10 classes), the ResNet-20 of He et al. (2016) with 1×1 conv + BatchNorm
  ("option B") shortcuts where the shape changes, so the residual path stays inside the proxy vocabulary.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from nessa.errors import InvalidArgumentError

__all__ = ["MODELS", "BasicBlock", "CNN1d", "ResNet", "build_model", "cnn1d", "load_factory", "mlp", "resnet20"]


def mlp(in_features: int = 40, num_classes: int = 10, hidden: tuple[int, ...] = (256, 128)) -> nn.Sequential:
    """A ReLU multi-layer perceptron for flat inputs.

    Args:
        in_features: values per sample (MNIST-1D: 40).
        num_classes: output classes.
        hidden: widths of the hidden layers.

    Returns:
        ``nn.Sequential`` taking ``(N, in_features)`` and returning logits ``(N, num_classes)``.
    """
    if in_features < 1 or num_classes < 1 or any(h < 1 for h in hidden):
        raise InvalidArgumentError(
            f"mlp sizes must be positive; got in_features={in_features}, num_classes={num_classes}, hidden={hidden}"
        )
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class CNN1d(nn.Module):
    """A small 1-D CNN for MNIST-1D: three conv-BN-ReLU layers, global average pooling, a linear classifier.

    Args:
        length: samples per input signal (MNIST-1D: 40).
        num_classes: output classes.
        width: channels of every conv layer.
    """

    def __init__(self, length: int = 40, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        if length < 4 or num_classes < 1 or width < 1:
            raise InvalidArgumentError(
                f"cnn1d needs length >= 4 and positive sizes; got length={length}, num_classes={num_classes}, "
                f"width={width}"
            )
        self.length = length
        self.features = nn.Sequential(
            nn.Conv1d(1, width, kernel_size=5, padding=2, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` of shape ``(N, 1, length)`` or ``(N, length)`` (viewed as one channel).

        The leading reshape applies to the graph input only, so proxy export folds it into the proxy's input shape
        ``(1, length)``.
        """
        x = x.reshape(x.size(0), 1, self.length)
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def cnn1d(length: int = 40, num_classes: int = 10, width: int = 32) -> CNN1d:
    """The MNIST-1D CNN; its proxy input shape is ``(1, length)``. See :class:`CNN1d`."""
    return CNN1d(length=length, num_classes=num_classes, width=width)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual add; a 1×1 conv + BN shortcut when the shape changes.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (and of the shortcut conv).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, §4.2): a 3×3 stem, three stages of basic blocks, pooling, linear.

    Args:
        blocks_per_stage: basic blocks in each of the three stages (3 gives ResNet-20).
        num_classes: output classes.
        width: channels of the first stage (doubled in each later stage).
        in_channels: input image channels.
    """

    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if blocks_per_stage < 1 or num_classes < 1 or width < 1 or in_channels < 1:
            raise InvalidArgumentError(
                f"ResNet sizes must be positive; got blocks_per_stage={blocks_per_stage}, num_classes={num_classes}, "
                f"width={width}, in_channels={in_channels}"
            )
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        in_planes = width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks: list[nn.Module] = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(N, in_channels, H, W)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> ResNet:
    """ResNet-20 for CIFAR-10 (about 0.27 M parameters at the default width). See :class:`ResNet`."""
    return ResNet(blocks_per_stage=3, num_classes=num_classes, width=width, in_channels=in_channels)


#: Model builders by name, for :func:`build_model` and the trainer's ``--model`` flag.
MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn1d": cnn1d, "resnet20": resnet20}


def load_factory(path: str) -> Callable[..., nn.Module]:
    """The callable at ``module:attr`` (a user's model factory, e.g. ``mymodels:vit_tiny``).

    The module is imported from ``sys.path`` and, failing that, the current directory.

    Raises:
        InvalidArgumentError: the module does not import or has no such callable.
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError(f"model {path!r} is not a module:factory import path (e.g. mymodels:small_vit)")
    if os.getcwd() not in sys.path:  # as `python -m` would: a module next to where the command runs imports
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the user's module raises on import
        raise InvalidArgumentError(
            f"cannot import {module_name!r} for model {path!r} ({type(exc).__name__}: {exc}); is it on PYTHONPATH?"
        ) from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise InvalidArgumentError(f"module {module_name!r} has no callable {attr!r} (for model {path!r})")
    return cast(Callable[..., nn.Module], factory)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name (``mlp``, ``cnn1d``, ``resnet20``) or ``module:factory`` with its keyword arguments.

    A factory gets those of ``num_classes``, ``channels``, ``in_channels`` and ``input_shape`` its signature names.

    Raises:
        InvalidArgumentError: unknown name, or arguments the builder does not take.
    """
    if ":" in name:
        factory = load_factory(name)
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        chosen = {k: v for k, v in kwargs.items() if k in params or (takes_all and k == "num_classes")}
        try:
            model = factory(**chosen)
        except TypeError as exc:
            raise InvalidArgumentError(f"bad arguments for model factory {name!r}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    builder = MODELS.get(name)
    if builder is None:
        raise InvalidArgumentError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}, or a module:factory import path"
        )
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise InvalidArgumentError(f"bad arguments for model {name!r}: {exc}") from exc
