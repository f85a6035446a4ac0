"""Export from torch: the accepted forms, BatchNorm folding, int8 quantization and size, and clear rejections."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nessa.errors import InvalidArgumentError
from nessa.proxy import Normalization, Proxy, ProxyEngine, dumps, export, quantize_per_channel
from nessa.proxy.quantize import dequantize
from nessa.trainer.models import cnn1d, mlp, resnet20

NUMPY = ProxyEngine("numpy")


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


def proxy_logits(proxy: Proxy, x: torch.Tensor) -> np.ndarray:
    labels = np.zeros(x.shape[0], dtype=np.int64)
    return NUMPY.run(proxy, x.numpy(), labels).logits


def module_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize(
    "build,shape", [(mlp, (40,)), (cnn1d, (40,)), (cnn1d, (1, 40)), (resnet20, (3, 32, 32))], ids=str
)
def test_fp32_export_equals_module(build: object, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = randomize_bn(build())  # type: ignore[operator]
    x = torch.randn(6, *shape)
    p = export(model, x[:1], quantize=None)
    want = module_logits(model, x)
    got = proxy_logits(p, x)
    # BN is folded in float64 and stored as float32: only float32 rounding differs from the module.
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_exported_graphs() -> None:
    p = export(resnet20(), torch.zeros(1, 3, 32, 32))
    ops = [p.op(n) for n in p.nodes]
    assert ops.count("conv2d") == 21  # 19 3x3 convs + 2 projection shortcuts
    assert ops.count("add") == 9
    assert "global_avgpool" in ops
    assert all(n.source for n in p.nodes)
    assert p.shapes()[p.embedding] == (64,)
    assert p.input_shape == (3, 32, 32)
    c = export(cnn1d(), torch.zeros(1, 40))
    assert c.input_shape == (1, 40)  # the model's input reshape became the proxy's input shape
    assert c.shapes()[c.embedding] == (32,)
    m = export(mlp(hidden=(32, 16)), torch.zeros(1, 40), version=5)
    assert m.version == 5
    assert m.shapes()[m.embedding] == (16,)  # the input of the last linear layer


@pytest.mark.parametrize("build,shape", [(mlp, (40,)), (cnn1d, (40,)), (resnet20, (3, 32, 32))], ids=str)
def test_int8_size_under_three_tenths_of_state_dict(build: object, shape: tuple[int, ...]) -> None:
    model = build()  # type: ignore[operator]
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    size = len(dumps(export(model, torch.zeros(1, *shape))))
    assert size <= 0.3 * len(buf.getvalue()), (size, len(buf.getvalue()))


def test_quantization_is_per_channel_symmetric() -> None:
    w = np.random.default_rng(0).standard_normal((6, 3, 3, 3)) * np.arange(1, 7)[:, None, None, None]
    w[2] = 0.0
    q, scales = quantize_per_channel(w)
    assert q.dtype == np.int8 and scales.shape == (6,)
    assert np.abs(q).max() == 127 and q.min() >= -127
    np.testing.assert_allclose(scales[[0, 1, 3, 4, 5]], np.abs(w).reshape(6, -1).max(1)[[0, 1, 3, 4, 5]] / 127, 1e-6)
    err = np.abs(dequantize(q, scales) - w)
    assert np.all(err <= scales[:, None, None, None] / 2 + 1e-6)
    assert np.all(q[2] == 0)


def test_int8_weights_close_to_folded_fp32() -> None:
    model = randomize_bn(cnn1d())
    p8 = export(model, torch.zeros(1, 40))
    p32 = export(model, torch.zeros(1, 40), quantize=None)
    for t in p8.message.tensors:
        _, scales = p8.tensor_raw(t.name)
        if scales is None:
            np.testing.assert_array_equal(p8.tensor(t.name), p32.tensor(t.name))  # biases stay float32
        else:
            err = np.abs(p8.tensor(t.name) - p32.tensor(t.name)).reshape(len(scales), -1).max(1)
            assert np.all(err <= scales * 0.5 + 1e-7)


def test_normalization_and_version_are_stored() -> None:
    norm = Normalization(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), dtype="uint8", scale=1 / 255)
    p = export(resnet20(width=4), torch.zeros(1, 3, 32, 32), version=12, normalization=norm)
    assert p.version == 12
    assert p.input_dtype == np.uint8
    assert p.normalization == Normalization(
        mean=tuple(np.float32(v) for v in norm.mean),
        std=tuple(np.float32(v) for v in norm.std),
        dtype="uint8",
        scale=float(np.float32(1 / 255)),
    )


def test_training_flag_is_restored() -> None:
    model = cnn1d().train()
    export(model, torch.zeros(2, 40))
    assert model.training


class AllForms(nn.Module):
    """Every accepted spelling of the vocabulary in one model."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding="same", bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.drop = nn.Dropout(0.5)
        self.c3 = nn.Conv1d(8, 4, 3)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 5)
        self.flat = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.c1(x)))
        h = torch.relu(self.c2(h)) + h
        h = self.pool(h)
        h = torch.add(self.avg(h), F.max_pool2d(h, 3, 1, 1))
        h = F.avg_pool2d(h, 2)
        h = self.drop(h)
        g = h.mean((2, 3))
        g2 = self.flat(F.adaptive_avg_pool2d(h, 1))
        g = g + g2
        g = self.fc1(g).relu()
        return self.fc2(g.view(g.size(0), -1))


def test_all_accepted_forms_export_exactly() -> None:
    torch.manual_seed(1)
    model = randomize_bn(AllForms())
    x = torch.randn(4, 3, 16, 16)
    p = export(model, x[:1], quantize=None)
    got, want = proxy_logits(p, x), module_logits(model, x)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))
    assert p.embedding == "relu_2" or p.shapes()[p.embedding] == (16,)


class Blocks(nn.Module):
    def __init__(self, act: nn.Module, out: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 10)
        self.act = act
        self.out = nn.Linear(10, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            Blocks(nn.ReLU()), nn.Identity(), Blocks(nn.ReLU()), nn.Identity(), Blocks(nn.ELU(), out=3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class FunctionalElu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.elu(x))


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(10, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lstm(x)[0][:, -1])


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, groups=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class SharedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc((self.bn(h) + h).mean((2, 3)))


class NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize(
    "model,x,match",
    [
        (Nested(), torch.zeros(1, 10), r"unsupported op 'ELU' at module 'blocks\.4\.act'; supported: Conv1d"),
        (FunctionalElu(), torch.zeros(1, 10), r"unsupported op 'elu' at module '<root>'"),
        (WithLSTM(), torch.zeros(1, 5, 10), r"unsupported op 'LSTM' at module 'lstm'"),
        (Grouped(), torch.zeros(1, 4, 6, 6), r"unsupported op 'Conv2d' at module 'conv' \(groups=2"),
        (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=0)), torch.zeros(1, 4), r"unsupported op 'Softmax'.*dim=0"),
    ],
    ids=["elu-module", "elu-function", "lstm", "groups", "softmax-batch"],
)
def test_ops_outside_the_vocabulary_are_named_without_fallback(model: nn.Module, x: torch.Tensor, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        export(model, x, fallback=False)


def test_no_linear_layer_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="no linear layer"):
        export(NoLinear(), torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize(
    "model,shape",
    [(SharedBN(), (3, 6, 6)), (nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)), (4,))],
    ids=["shared-bn", "bn-first"],
)
def test_batchnorm_that_cannot_fold_becomes_a_per_channel_affine(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = randomize_bn(model)
    x = torch.randn(3, *shape)
    p = export(model, x[:1], quantize=None, fallback=False)
    assert "mul" in [p.op(n) for n in p.nodes]
    got, want = proxy_logits(p, x), module_logits(model, x)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="quantize"):
        export(mlp(), torch.zeros(1, 40), quantize="int4")
    with pytest.raises(InvalidArgumentError, match="batch axis"):
        export(mlp(), torch.zeros(40))
    with pytest.raises(InvalidArgumentError, match="example input"):
        export(mlp(), torch.zeros(1, 41))


@pytest.mark.parametrize("quantize", ["int8", None])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected(quantize: str | None, bad: float) -> None:
    model = mlp(hidden=(8,))
    with torch.no_grad():
        model[0].weight[3, 1] = bad
    with pytest.raises(InvalidArgumentError, match="NaN or Inf"):
        export(model, torch.zeros(1, 40), quantize=quantize)
    for edit in ("running_var", "bias"):
        model = randomize_bn(cnn1d(width=4))
        with torch.no_grad():
            getattr(model.features[4], edit)[2] = -1.0 if edit == "running_var" else bad
        with pytest.raises(InvalidArgumentError, match=r"BatchNorm at module 'features\.4' has NaN or Inf"):
            export(model, torch.zeros(1, 40), quantize=quantize)
