"""The proxy engines: OpenCL, torch and numpy agree on the same int8 proxy of the MLP, the 1-D CNN and ResNet-20,
with random and with trained weights; trained int8 proxies keep the fp32 model's accuracy on MNIST-1D; inputs are
laid out, batched and checked; stored samples run through the real store.

Tolerance: every engine computes with the very same float32 weights (int8 values times their scale, dequantized
once), so only float32 rounding in different accumulation orders separates them. That error grows like
sqrt(K) * 2^-24 per dot product of length K and compounds mildly over ~20 layers; measured it is below 1e-6 of the
logits' norm for these models. We hold each sample's logits to 1e-5 * ||z_i|| (an order of magnitude of margin),
and the argmax to agree on at least 99 % of samples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nessa.errors import InvalidArgumentError
from nessa.proxy import Normalization, Proxy, ProxyEngine, export
from nessa.proxy.opencl_engine import OpenCLEngine
from nessa.trainer.models import cnn1d, mlp, resnet20

ENGINES = {name: ProxyEngine(name, batch_size=64) for name in ("opencl", "torch", "numpy")}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


def assert_agree(a: np.ndarray, b: np.ndarray) -> None:
    norm = np.linalg.norm(b, axis=1)
    assert np.all(np.linalg.norm(a - b, axis=1) <= 1e-5 * norm + 1e-6)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99


def assert_outputs_agree(outs: dict, labels: np.ndarray) -> None:
    ref = outs["torch"]
    for name, o in outs.items():
        assert o.logits.shape == ref.logits.shape and o.logits.dtype == np.float32
        assert_agree(o.logits, ref.logits)
        np.testing.assert_allclose(o.grad_embedding, ref.grad_embedding, atol=1e-5)
        np.testing.assert_allclose(o.loss, ref.loss, rtol=1e-4, atol=1e-5)
        scale = max(1.0, float(np.abs(ref.embedding).max()))
        assert np.abs(o.embedding - ref.embedding).max() <= 1e-5 * scale, name
    # The head's own definition: grad = softmax(z) - onehot(y), loss = CE.
    z = torch.from_numpy(ref.logits)
    want = torch.softmax(z, 1).numpy()
    want[np.arange(len(labels)), labels] -= 1
    np.testing.assert_allclose(outs["opencl"].grad_embedding, want, atol=1e-5)
    ce = torch.nn.functional.cross_entropy(z, torch.from_numpy(labels), reduction="none").numpy()
    np.testing.assert_allclose(outs["opencl"].loss, ce, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "build,shape,n",
    [(mlp, (40,), 131), (cnn1d, (40,), 131), (resnet20, (3, 32, 32), 70)],
    ids=["mlp", "cnn1d", "resnet20"],
)
def test_engines_agree_on_random_weights(build: Callable[[], nn.Module], shape: tuple[int, ...], n: int) -> None:
    torch.manual_seed(0)
    model = randomize_bn(build())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *shape)).astype(np.float32)  # n is not a multiple of the batch size (64)
    x.setflags(write=False)  # as samples read straight from the store's buffers
    y = rng.integers(0, 10, n)
    proxy = export(model, torch.from_numpy(x[:1].copy()))
    outs = {name: e.run(proxy, x, y) for name, e in ENGINES.items()}
    assert outs["opencl"].embedding.shape == (n, proxy.shapes()[proxy.embedding][0])
    assert_outputs_agree(outs, y)


@pytest.fixture(scope="module")
def mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    return {k: d[k].astype(np.float32 if k.startswith("x") else np.int64) for k in ("x", "y", "x_test", "y_test")}


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int = 128) -> nn.Module:
    """A short Adam training run (BatchNorm statistics come from the data); returns the model in eval mode.

    One torch thread: these small batches gain little from more, and on a loaded machine torch's thread pool
    thrashes (measured 40x slower for the MLP with two threads on two busy cores).
    """
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), batch):
                b = perm[i : i + batch]
                loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def fp32_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


@pytest.fixture(scope="module")
def trained_cnn(mnist1d: dict[str, np.ndarray]) -> nn.Module:
    """cnn1d trained for 8 epochs on MNIST-1D (a few seconds; ~95 % test accuracy)."""
    torch.manual_seed(0)
    return train(cnn1d(), mnist1d["x"], mnist1d["y"], epochs=8, lr=1e-2)


@pytest.fixture(scope="module")
def trained_mlp(mnist1d: dict[str, np.ndarray]) -> nn.Module:
    """The MLP trained for 6 epochs on MNIST-1D (under 1 s; ~55 % test accuracy, MLPs top out near 70 % on it)."""
    torch.manual_seed(0)
    return train(mlp(), mnist1d["x"], mnist1d["y"], epochs=6, lr=2e-3)


def test_trained_int8_proxy_keeps_accuracy(trained_cnn: nn.Module, mnist1d: dict[str, np.ndarray]) -> None:
    x, y = mnist1d["x_test"], mnist1d["y_test"]
    fp32_acc = fp32_accuracy(trained_cnn, x, y)
    assert fp32_acc > 0.8  # the short training did learn
    proxy = export(trained_cnn, torch.from_numpy(x[:1]), version=8)
    outs = {name: e.run(proxy, x, y) for name, e in ENGINES.items()}  # stored (40,) samples, proxy input (1, 40)
    assert_outputs_agree(outs, y)
    for o in outs.values():
        int8_acc = (o.logits.argmax(1) == y).mean()
        assert abs(int8_acc - fp32_acc) <= 0.01, (int8_acc, fp32_acc)


def test_trained_mlp_engines_agree_and_keep_accuracy(trained_mlp: nn.Module, mnist1d: dict[str, np.ndarray]) -> None:
    x, y = mnist1d["x_test"], mnist1d["y_test"]
    fp32_acc = fp32_accuracy(trained_mlp, x, y)
    assert fp32_acc > 0.4  # well above chance (0.1): the weights are trained
    proxy = export(trained_mlp, torch.from_numpy(x[:1]), version=15)
    outs = {name: e.run(proxy, x, y) for name, e in ENGINES.items()}
    assert_outputs_agree(outs, y)
    for o in outs.values():
        assert abs((o.logits.argmax(1) == y).mean() - fp32_acc) <= 0.01


def test_trained_resnet20_engines_agree() -> None:
    """ResNet-20 trained briefly on real images (scikit-learn's 8x8 digits, upsampled to 3x32x32), so its weights
    and BatchNorm statistics come from data; the OpenCL and torch engines agree on held-out digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    img = np.kron(digits.images / 16.0, np.ones((4, 4)))  # (n, 32, 32) in [0, 1]
    x = np.repeat(img[:, None], 3, axis=1).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, y_train, x_test, y_test = x[:640], y[:640], x[1400:1600], y[1400:1600]
    torch.manual_seed(0)
    model = train(resnet20(), x_train, y_train, epochs=1, lr=3e-3, batch=64)
    fp32_acc = fp32_accuracy(model, x_test, y_test)
    assert fp32_acc > 0.3  # above chance (0.1) after ten steps
    proxy = export(model, torch.from_numpy(x_test[:1]), version=1)
    outs = {name: ENGINES[name].run(proxy, x_test, y_test) for name in ("opencl", "torch")}
    assert_outputs_agree(outs, y_test)
    for o in outs.values():
        assert abs((o.logits.argmax(1) == y_test).mean() - fp32_acc) <= 0.02  # 200 samples: 1 sample = 0.5 point


def test_uint8_images_are_scaled_and_normalized() -> None:
    torch.manual_seed(0)
    model = randomize_bn(resnet20(width=8))
    norm = Normalization(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), dtype="uint8", scale=1 / 255)
    proxy = export(model, torch.zeros(1, 3, 32, 32), quantize=None, normalization=norm)
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (19, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 19)
    outs = {name: e.run(proxy, raw, y) for name, e in ENGINES.items()}
    assert_outputs_agree(outs, y)
    mean = torch.tensor(norm.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(norm.std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        want = model((torch.from_numpy(raw).float() / 255 - mean) / std).numpy()
    assert_agree(outs["opencl"].logits, want)
    # Channel-last images (as decoded PNGs) are transposed to the proxy's (C, H, W).
    hwc = ENGINES["opencl"].run(proxy, np.ascontiguousarray(raw.transpose(0, 2, 3, 1)), y)
    np.testing.assert_array_equal(hwc.logits, outs["opencl"].logits)


def test_batching_does_not_change_results() -> None:
    proxy = export(cnn1d(width=8), torch.zeros(1, 40))
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((37, 40)).astype(np.float32), rng.integers(0, 10, 37)
    whole = ENGINES["opencl"].run(proxy, x, y, batch_size=64)
    for bs in (1, 5, 36):
        part = ENGINES["opencl"].run(proxy, x, y, batch_size=bs)
        np.testing.assert_array_equal(part.logits, whole.logits)
        np.testing.assert_array_equal(part.embedding, whole.embedding)


def test_opencl_plan_fuses_residual_blocks() -> None:
    proxy = export(resnet20(width=4), torch.zeros(1, 3, 32, 32))
    plan = OpenCLEngine().plan(proxy, 8)
    steps = plan.describe()
    kinds = [s.split()[0] for s in steps]
    assert "add" not in kinds and "relu" not in kinds  # every add and ReLU fused into a conv
    assert sum(s.endswith("+residual +relu") for s in steps) == 9
    assert kinds.count("conv") == 21 and kinds[-2:] == ["global_avgpool", "linear"]


def _proxy_for(shape: tuple[int, ...], dtype: str, classes: int) -> Proxy:
    model = nn.Sequential(nn.Conv2d(shape[0], 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.append(nn.Linear(6, classes))
    return export(model, torch.zeros(1, *shape), normalization=Normalization(dtype=dtype, scale=1 / 255))  # type: ignore[arg-type]


def test_run_dataset_reads_the_store(small_dataset: Callable[..., tuple[Path, np.ndarray, np.ndarray]]) -> None:
    from nessa.store import open_dataset

    path, x, y = small_dataset(n=150, shape=(3, 4, 4), dtype="uint8", shards=2, classes=5)
    proxy = _proxy_for((3, 4, 4), "uint8", 5)
    with open_dataset(path) as reader:
        proxy.validate(expected_input_shape=reader.sample_shape, expected_num_classes=reader.num_classes)
        idx = np.array([149, 3, 77, 3, 0, 100])
        got = ENGINES["opencl"].run_dataset(proxy, reader, idx, batch_size=4)
        every = ENGINES["opencl"].run_dataset(proxy, reader)
    want = ENGINES["opencl"].run(proxy, x[idx], y[idx])
    np.testing.assert_array_equal(got.logits, want.logits)
    np.testing.assert_array_equal(got.loss, want.loss)
    assert len(every) == 150
    np.testing.assert_array_equal(every.logits[idx], want.logits)
    with pytest.raises(InvalidArgumentError, match="indices"):
        ENGINES["opencl"].run_dataset(proxy, reader, [150])


def test_bad_inputs_are_rejected() -> None:
    proxy = export(cnn1d(width=4), torch.zeros(1, 40))
    e = ENGINES["opencl"]
    x, y = np.zeros((4, 40), np.float32), np.zeros(4, np.int64)
    with pytest.raises(InvalidArgumentError, match="unknown proxy engine"):
        ProxyEngine("cuda")
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        ProxyEngine("torch", batch_size=0)
    with pytest.raises(InvalidArgumentError, match="no samples"):
        e.run(proxy, np.zeros((0, 40), np.float32), np.zeros(0, np.int64))
    with pytest.raises(InvalidArgumentError, match="float32 samples"):
        e.run(proxy, x.astype(np.int32), y)
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        e.run(proxy, np.zeros((4, 41), np.float32), y)
    with pytest.raises(InvalidArgumentError, match=r"labels must be in \[0, 10\)"):
        e.run(proxy, x, np.array([0, 1, 2, 10]))
    with pytest.raises(InvalidArgumentError, match="one label per sample"):
        e.run(proxy, x, y[:3])
    u8 = _proxy_for((3, 4, 4), "uint8", 5)
    with pytest.raises(InvalidArgumentError, match="raw uint8 samples"):
        e.run(u8, np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.int64))
