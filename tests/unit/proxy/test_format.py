"""The proxy wire format: dumps/loads, the checksum, and validation of broken or misfitting proxies."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pytest
import torch

from nessa.errors import InvalidArgumentError
from nessa.proxy import INPUT, Normalization, Proxy, dumps, export, loads
from nessa.proxy.format import sample_layout
from nessa.trainer.models import cnn1d, mlp
from nessa.v1 import proxy_pb2 as pb


@pytest.fixture(scope="module")
def proxy() -> Proxy:
    torch.manual_seed(0)
    return export(cnn1d(width=8), torch.zeros(2, 40), version=7)


def broken(proxy: Proxy, edit: Callable[[pb.Proxy], None]) -> bytes:
    """The proxy's bytes after ``edit``, re-sealed so that only the structural problem remains."""
    msg = pb.Proxy()
    msg.CopyFrom(proxy.message)
    edit(msg)
    return dumps(Proxy(msg))


def test_roundtrip_keeps_everything(proxy: Proxy) -> None:
    data = dumps(proxy)
    back = loads(data)
    assert back.message == proxy.message
    assert dumps(back) == data
    assert back.version == 7
    assert back.input_shape == (1, 40)
    assert back.num_classes == 10
    assert back.quantized
    for t in proxy.message.tensors:
        np.testing.assert_array_equal(back.tensor(t.name), proxy.tensor(t.name))


def test_checksum_is_sha256_of_message_without_checksum(proxy: Proxy) -> None:
    msg = pb.Proxy()
    msg.ParseFromString(dumps(proxy))
    stored = msg.checksum
    msg.checksum = ""
    assert stored == hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()


def test_checksum_mismatch_is_rejected(proxy: Proxy) -> None:
    msg = pb.Proxy()
    msg.ParseFromString(dumps(proxy))
    msg.version = 8  # changed after sealing
    with pytest.raises(InvalidArgumentError, match="checksum mismatch"):
        loads(msg.SerializeToString())
    data = bytearray(dumps(proxy))
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the weights
    with pytest.raises(InvalidArgumentError, match=r"checksum mismatch|not a nessa\.v1\.Proxy"):
        loads(bytes(data))


def test_missing_checksum_and_garbage(proxy: Proxy) -> None:
    msg = pb.Proxy()
    msg.CopyFrom(proxy.message)
    msg.checksum = ""
    with pytest.raises(InvalidArgumentError, match="no checksum"):
        loads(msg.SerializeToString())
    with pytest.raises(InvalidArgumentError, match=r"not a nessa\.v1\.Proxy"):
        loads(b"\xff\xff\xff\xff not a proxy")


def _tensor(msg: pb.Proxy, name_part: str) -> pb.Tensor:
    return next(t for t in msg.tensors if name_part in t.name)


def _set_float_weight(msg: pb.Proxy, value: float) -> None:
    t = _tensor(msg, ".bias")
    arr = np.frombuffer(t.data, "<f4").copy()
    arr[0] = value
    t.data = arr.tobytes()


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.nodes[1].inputs.__setitem__(0, "nowhere"), "neither a node"),
        (lambda m: m.nodes[0].inputs.__setitem__(0, m.nodes[2].name), "cycle"),
        (lambda m: _set_float_weight(m, float("nan")), "NaN or Inf"),
        (lambda m: _set_float_weight(m, float("inf")), "NaN or Inf"),
        (lambda m: _tensor(m, ".weight").scales.__setitem__(0, float("nan")), "scales"),
        (lambda m: _tensor(m, ".weight").scales.__setitem__(0, 0.0), "scales"),
        (lambda m: setattr(_tensor(m, ".weight"), "data", _tensor(m, ".weight").data[:-1]), "bytes but its shape"),
        (lambda m: _tensor(m, ".weight").shape.__setitem__(0, 9), "bytes but its shape|scales"),
        (lambda m: setattr(m.nodes[1], "name", m.nodes[0].name), "unique"),
        (lambda m: setattr(m.nodes[1], "name", INPUT), "reserved"),
        (lambda m: setattr(m.nodes[0], "op", 42), "unknown op"),
        (lambda m: setattr(m.nodes[0], "weight", "missing.weight"), "no tensor named"),
        (lambda m: setattr(m, "output", "nope"), "not a node"),
        (lambda m: setattr(m, "embedding", "nope"), "not a node"),
        (lambda m: setattr(m, "num_classes", 11), "declares 11 classes"),
        (lambda m: setattr(m, "format_version", 99), "format version"),
        (lambda m: m.input.shape.append(1), "spatial axes"),
        (lambda m: m.input.shape.__setitem__(0, 2), "channels"),
        (lambda m: (m.input.mean.append(0.0), m.input.std.append(0.0)), "std"),
        (lambda m: setattr(m.input, "scale", 0.0), "scale"),
        (lambda m: setattr(m.input, "dtype", pb.DTYPE_INT8), "dtype"),
        (lambda m: m.nodes[0].stride.extend([1, 1]), "stride has 3 values"),
    ],
)
def test_structural_problems_are_rejected(proxy: Proxy, edit: Callable[[pb.Proxy], None], match: str) -> None:
    data = broken(proxy, edit)
    with pytest.raises(InvalidArgumentError, match=match):
        loads(data)


def test_fit_to_dataset(proxy: Proxy) -> None:
    proxy.validate(expected_input_shape=(40,), expected_num_classes=10)  # stored MNIST-1D samples: reshaped
    proxy.validate_for(input_shape=(1, 40), num_classes=10)
    with pytest.raises(InvalidArgumentError, match="does not fit the dataset"):
        proxy.validate(expected_input_shape=(3, 32, 32))
    with pytest.raises(InvalidArgumentError, match="predicts 10 classes but the dataset has 100"):
        proxy.validate(expected_num_classes=100)


def test_sample_layouts() -> None:
    assert sample_layout((3, 32, 32), (3, 32, 32)) == "same"
    assert sample_layout((32, 32, 3), (3, 32, 32)) == "hwc"
    assert sample_layout((40,), (1, 40)) == "reshape"
    assert sample_layout((41,), (1, 40)) is None


def test_normalization_checks() -> None:
    Normalization(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), dtype="uint8", scale=1 / 255)
    with pytest.raises(InvalidArgumentError, match="same length"):
        Normalization(mean=(0.5,), std=())
    with pytest.raises(InvalidArgumentError, match="non-zero"):
        Normalization(mean=(0.5,), std=(0.0,))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        Normalization(dtype="int16")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="channels"):
        export(mlp(), torch.zeros(1, 40), normalization=Normalization(mean=(0.1, 0.2), std=(1.0, 1.0)))


def test_float32_proxy_roundtrip() -> None:
    p = export(mlp(hidden=(16,)), torch.zeros(1, 40), quantize=None, normalization=Normalization(dtype="uint8"))
    back = loads(dumps(p))
    assert not back.quantized
    assert back.input_dtype == np.uint8
    assert back.normalization.scale == 1.0
