"""The extended proxy vocabulary: every op exported from torch and run by the numpy reference, the torch engine and
the OpenCL kernels, held to the torch module and to each other; a small ViT and a SiLU ResNet end to end; the
torch.export path for a model with an op outside the vocabulary; one clear error for a model nothing can export.

Float32 weights (``quantize=None``) so the module itself is the oracle; tolerances as in test_engine.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from user_models import silu_resnet, tiny_vit

from nessa.errors import InvalidArgumentError
from nessa.proxy import ProxyEngine, dumps, export, loads

ENGINES = {name: ProxyEngine(name, batch_size=8) for name in ("numpy", "torch", "opencl")}


class Fn(nn.Module):
    """``head(f(body(x)))``: one op under test between a linear body and a linear head."""

    def __init__(self, f: Callable[..., torch.Tensor], shape: tuple[int, ...], mod: nn.Module | None = None) -> None:
        super().__init__()
        self.f = f
        self.mod = mod if mod is not None else nn.Identity()
        self.body = nn.Linear(shape[-1], shape[-1])
        self.head = nn.LazyLinear(3)
        self.shape = shape
        with torch.no_grad():
            self.head(torch.flatten(self.f(self, torch.zeros(1, *shape)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.f(self, self.body(x)), 1))


def _attn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    q = x.unflatten(-1, (2, -1)).transpose(1, 2)  # (N, heads, T, d)
    return F.scaled_dot_product_attention(q, q * 0.5, q + 1.0).transpose(1, 2).flatten(2)


class Params(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, 6))
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.scale = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x + self.pos], dim=1)
        return x * self.scale


OPS: dict[str, tuple[Any, ...]] = {
    "gelu": (lambda m, x: F.gelu(x), (4, 6), "gelu"),
    "gelu-module": (lambda m, x: m.mod(x), (4, 6), "gelu", nn.GELU),
    "silu": (lambda m, x: F.silu(x), (4, 6), "silu"),
    "sigmoid": (lambda m, x: torch.sigmoid(x), (4, 6), "sigmoid"),
    "tanh": (lambda m, x: x.tanh(), (4, 6), "tanh"),
    "softmax": (lambda m, x: x.softmax(-1), (4, 6), "softmax"),
    "layernorm": (lambda m, x: F.layer_norm(x, (6,)), (4, 6), "layernorm"),
    "groupnorm": (lambda m, x: m.mod(x), (4, 6), "groupnorm", lambda: nn.GroupNorm(2, 4)),
    "layernorm-module": (lambda m, x: m.mod(x), (4, 6), "layernorm", lambda: nn.LayerNorm(6)),
    "silu-module": (lambda m, x: m.mod(x), (4, 6), "silu", nn.SiLU),
    "unflatten-module": (lambda m, x: m.mod(x), (4, 6), "reshape", lambda: nn.Unflatten(2, (3, 2))),
    "matmul": (lambda m, x: x @ x.transpose(1, 2), (4, 6), "matmul"),
    "bmm": (lambda m, x: torch.bmm(x.transpose(1, 2), x), (4, 6), "matmul"),
    "attention": (_attn, (4, 6), "attention"),
    "reshape": (lambda m, x: x.reshape(x.shape[0], 2, 12), (4, 6), "reshape"),
    "permute": (lambda m, x: x.unflatten(2, (2, 3)).permute(0, 3, 1, 2).contiguous(), (4, 6), "permute"),
    "transpose": (lambda m, x: x.transpose(1, 2), (4, 6), "permute"),
    "concat": (lambda m, x: torch.cat([x, x * 2.0], dim=2), (4, 6), "concat"),
    "slice": (lambda m, x: x[:, 1:3], (4, 6), "slice"),
    "select": (lambda m, x: x[:, 0], (4, 6), "slice"),
    "mean": (lambda m, x: x.mean(1), (4, 6), "mean"),
    "mean-keepdim": (lambda m, x: x.mean(1, keepdim=True), (4, 6), "mean"),
    "mean-last": (lambda m, x: x.mean(-1, keepdim=True), (4, 6), "global_avgpool"),
    "mul-broadcast": (lambda m, x: x * x[:, :1], (4, 6), "mul"),
    "add-broadcast": (lambda m, x: x + x.mean(1, keepdim=True), (4, 6), "add"),
    "scale": (lambda m, x: (x - 1.0) / 4.0 + 2.0, (4, 6), "scale"),
    "sub": (lambda m, x: x - x.tanh(), (4, 6), "scale"),
    "parameters": (lambda m, x: m.mod(x), (4, 6), "constant", Params),
    "linear-3d": (lambda m, x: x, (4, 6), "linear"),
}


def _run_all(proxy, x: np.ndarray) -> dict[str, np.ndarray]:
    labels = np.zeros(x.shape[0], dtype=np.int64)
    return {name: engine.run(proxy, x, labels).logits for name, engine in ENGINES.items()}


def _close(got: np.ndarray, want: np.ndarray, rel: float = 1e-5) -> None:
    norm = np.linalg.norm(want, axis=1)
    assert np.all(np.linalg.norm(got - want, axis=1) <= rel * norm + 1e-5), np.abs(got - want).max()


@pytest.mark.parametrize("name", list(OPS))
def test_op_agrees_across_engines_and_with_torch(name: str) -> None:
    f, shape, op, *factory = OPS[name]
    torch.manual_seed(0)
    model = Fn(f, shape, factory[0]() if factory else None).eval()
    with torch.no_grad():  # non-trivial affine parameters for the norms
        for p in model.mod.parameters():
            p.add_(torch.rand_like(p) - 0.5)
    x = torch.randn(5, *shape)
    proxy = export(model, x[:1], quantize=None, fallback=False)
    assert op in [proxy.op(n) for n in proxy.nodes]
    with torch.no_grad():
        want = model(x).numpy()
    for engine, got in _run_all(proxy, x.numpy()).items():
        assert got.shape == want.shape, engine
        _close(got, want)


@pytest.mark.parametrize(
    "pool,ops",
    [
        (nn.AdaptiveAvgPool2d(2), "avgpool"),
        (nn.AdaptiveMaxPool2d((2, 1)), "maxpool"),
        (nn.AdaptiveAvgPool2d(1), "global_avgpool"),
    ],
    ids=["avg-2", "max-2x1", "avg-1"],
)
def test_adaptive_pooling(pool: nn.Module, ops: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), pool, nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 2, 6, 6))
    model.eval()
    x = torch.randn(4, 2, 6, 6)
    proxy = export(model, x[:1], quantize=None, fallback=False)
    assert ops in [proxy.op(n) for n in proxy.nodes]
    with torch.no_grad():
        want = model(x).numpy()
    for got in _run_all(proxy, x.numpy()).values():
        _close(got, want)


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


def test_embedding_of_stored_token_ids() -> None:
    torch.manual_seed(0)
    model = TokenModel().eval()
    ids = torch.randint(0, 11, (6, 5))
    proxy = export(model, ids[:1], quantize=None, fallback=False)
    assert "embedding" in [proxy.op(n) for n in proxy.nodes]
    with torch.no_grad():
        want = model(ids).numpy()
    for got in _run_all(proxy, ids.numpy().astype(np.float32)).values():
        _close(got, want)
    # An id outside the table gives NaN logits on every engine (the daemon's dry run rejects such a proxy).
    bad = ids.numpy().astype(np.float32)
    bad[0, 0] = 11
    for got in _run_all(proxy, bad).values():
        assert np.isnan(got[0]).all() and np.isfinite(got[1:]).all()


@pytest.mark.parametrize("build", [tiny_vit, silu_resnet], ids=["vit", "silu-resnet"])
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_vit_and_silu_resnet_run_on_every_engine(build: Callable[[], nn.Module], quantize: str | None) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(6, 3, 16, 16)
    proxy = loads(dumps(export(model, x[:1], quantize=quantize, fallback=False)))
    assert not proxy.program
    outs = _run_all(proxy, x.numpy())
    for got in outs.values():
        _close(got, outs["torch"])
    if quantize is None:
        with torch.no_grad():
            _close(outs["torch"], model(x).numpy())
    ops = {proxy.op(n) for n in proxy.nodes}
    if build is tiny_vit:
        assert {"attention", "layernorm", "gelu", "concat", "constant"} <= ops
        assert proxy.shapes()[proxy.embedding] == (32,)
    else:
        assert {"silu", "groupnorm", "conv2d", "add"} <= ops
        assert "batchnorm" not in ops  # folded into the convs


class EluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ELU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_an_op_outside_the_vocabulary_runs_as_a_torch_export_program() -> None:
    torch.manual_seed(0)
    model = EluNet().eval()
    x = torch.randn(5, 3, 8, 8)
    proxy = loads(dumps(export(model, x[:1])))
    assert proxy.program and not proxy.nodes
    assert proxy.program_reason == "ELU at module 'act'"
    labels = np.array([0, 1, 2, 0, 1])
    out = ENGINES["torch"].run(proxy, x.numpy(), labels)
    with torch.no_grad():
        _close(out.logits, model(x).numpy())
        emb = model.act(model.conv(x)).mean((2, 3)).numpy()
    np.testing.assert_allclose(out.embedding, emb, atol=1e-5)
    one = ENGINES["torch"].run(proxy, x.numpy()[:1], labels[:1])  # the batch axis is dynamic
    assert one.logits.shape == (1, 3)
    for name in ("opencl", "numpy"):
        with pytest.raises(InvalidArgumentError, match=r"torch.export program \(ELU at module 'act'.*torch engine"):
            ENGINES[name].run(proxy, x.numpy(), labels)


@torch.fx.wrap
def _host_roundtrip(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.tanh(x.detach().numpy()))


class Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_host_roundtrip(x))


def test_a_model_nothing_can_export_gets_one_error_naming_the_op() -> None:
    with pytest.raises(
        InvalidArgumentError,
        match=r"unsupported op '_host_roundtrip' at module '<root>' is outside the proxy vocabulary, and torch.export",
    ):
        export(Unexportable().eval(), torch.zeros(2, 4))


def test_head_only_proxy_with_features_gives_the_full_proxys_outputs() -> None:
    from nessa.proxy import head_features, with_features

    torch.manual_seed(0)
    model = tiny_vit().eval()
    x = torch.randn(6, 3, 16, 16)
    full = export(model, x[:1], quantize=None, fallback=False)
    head = export(model, x[:1], quantize=None, head_only=True)
    assert [head.op(n) for n in head.nodes] == ["linear"] and head.input_shape == (32,)
    feats = head_features(model, x)
    proxy = loads(dumps(with_features(head, feats, np.arange(10, 16))))
    assert proxy.head_only
    idx, stored = proxy.features()
    assert idx.tolist() == list(range(10, 16)) and np.array_equal(stored, feats)
    labels = np.array([0, 1, 2, 0, 1, 2])
    want = ENGINES["torch"].run(full, x.numpy(), labels)
    for engine in ENGINES.values():
        got = engine.run(proxy, stored, labels)
        _close(got.logits, want.logits)
        np.testing.assert_allclose(got.grad_embedding, want.grad_embedding, atol=1e-5)
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="computes more after it"):
        export(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), torch.zeros(2, 4), head_only=True)
    with pytest.raises(InvalidArgumentError, match="distinct"):
        with_features(head, feats, np.zeros(6))


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_embedding_bag(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(9, 6, mode=mode), nn.Linear(6, 3)).eval()
    ids = torch.randint(0, 9, (5, 4))
    proxy = export(model, ids[:1], quantize=None, fallback=False)
    with torch.no_grad():
        want = model(ids).numpy()
    for got in _run_all(proxy, ids.numpy().astype(np.float32)).values():
        _close(got, want)
