"""The extended OpenCL kernels (fpga_kernels/nn_ext.cl) against their numpy references, op by op, on shapes that
do not fill work-groups evenly, broadcasts on either side, rank-5 permutations and constants repeated over a batch.

Float32 kernels against float64-accumulating references: held to 1e-5 relative (1e-6 absolute)."""

from __future__ import annotations

import numpy as np
import pytest

from nessa.accel import nn_ext_ops as ext
from nessa.accel.reference import nn as ref
from nessa.errors import InvalidArgumentError

RNG = np.random.default_rng(0)


def _x(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _close(got: object, want: np.ndarray) -> None:
    arr = got.get() if hasattr(got, "get") else np.asarray(got)  # type: ignore[union-attr]
    assert arr.shape == want.shape
    np.testing.assert_allclose(arr, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["relu", "gelu", "silu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 9, 3)])
def test_unary(kind: str, shape: tuple[int, ...]) -> None:
    x = _x(*shape) * 4
    _close(ext.unary(x, kind), ref.unary(x, kind))


def test_scale() -> None:
    x = _x(5, 11)
    _close(ext.unary(x, "scale", 0.25, -3.0), ref.scale(x, 0.25, -3.0))


@pytest.mark.parametrize("shape", [(3, 1), (2, 7, 33), (65, 10)])
def test_softmax_rows(shape: tuple[int, ...]) -> None:
    x = _x(*shape) * 10
    _close(ext.softmax(x), ref.softmax(x))


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(bias: bool) -> None:
    x, w, b = _x(4, 9, 12), _x(12), _x(12)
    _close(ext.layernorm(x, w, b if bias else None, 1e-5), ref.layernorm(x, w, b if bias else None, 1e-5))


@pytest.mark.parametrize("shape,groups", [((3, 6, 5, 5), 3), ((2, 4, 7), 1), ((2, 4, 7), 4)])
def test_groupnorm(shape: tuple[int, ...], groups: int) -> None:
    x, w, b = _x(*shape), _x(shape[1]), _x(shape[1])
    _close(ext.groupnorm(x, w, b, groups, 1e-5), ref.groupnorm(x, w, b, groups, 1e-5))
    with pytest.raises(InvalidArgumentError, match="divide"):
        ext.groupnorm(x, w, b, 5, 1e-5)


@pytest.mark.parametrize("a,b", [((3, 5, 7), (3, 7, 2)), ((2, 3, 4, 9), (2, 3, 9, 13))])
def test_matmul(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    x, y = _x(*a), _x(*b)
    _close(ext.matmul(x, y), ref.matmul(x, y))
    with pytest.raises(InvalidArgumentError, match="cannot multiply"):
        ext.matmul(x, x)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_attention(alpha: float) -> None:
    q, k, v = _x(2, 3, 5, 8), _x(2, 3, 7, 8), _x(2, 3, 7, 6)
    _close(ext.attention(q, k, v, alpha), ref.attention(q, k, v, alpha))


def test_embedding_with_out_of_range_ids() -> None:
    w = _x(10, 6)
    ids = np.array([[0, 9, 3.4], [10, -1, 2.6]], np.float32)
    got = ext.embedding(ids, w, 10, 6).get()
    want = ref.embedding(ids, w)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)])


@pytest.mark.parametrize("axes", [(0, 2, 1), (0, 4, 2, 1, 3), (0, 3, 1, 2, 4)])
def test_permute(axes: tuple[int, ...]) -> None:
    x = _x(*(2, 3, 4, 5, 6)[: len(axes)])
    _close(ext.permute(x, axes), np.ascontiguousarray(x.transpose(axes)))


def test_concat_repeats_a_batch_of_one() -> None:
    a, const, b = _x(4, 2, 3), _x(1, 1, 3), _x(4, 5, 3)
    want = np.concatenate([a, np.broadcast_to(const, (4, 1, 3)), b], axis=1)
    _close(ext.concat([a, const, b], 1, 4), want)


def test_slice() -> None:
    x = _x(3, 7, 5)
    _close(ext.slice_axis(x, 1, 2, 6), x[:, 2:6])
    _close(ext.slice_axis(x, 2, 0, 1), x[:, :, 0:1])


@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize(
    "a,b", [((4, 3, 5), (1, 3, 5)), ((4, 3, 5), (4, 1, 5)), ((4, 1, 5), (4, 3, 1)), ((2, 6), (2, 6))]
)
def test_binary_broadcasts(kind: str, a: tuple[int, ...], b: tuple[int, ...]) -> None:
    x, y = _x(*a), _x(*b)
    _close(ext.binary(x, y, kind), ref.binary(x, y, kind))


@pytest.mark.parametrize("axes", [(1,), (2, 3), (1, 3)])
def test_mean(axes: tuple[int, ...]) -> None:
    x = _x(3, 4, 5, 6)
    _close(ext.mean(x, axes), ref.mean_axes(x, axes))
