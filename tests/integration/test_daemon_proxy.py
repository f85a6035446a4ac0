"""PushProxy and proxy-driven Select on a real daemon: real exported proxies, PoCL kernels, real LMDB data."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from daemon_helpers import TOY_DIM, TOY_N, make_toy, running
from proxy_helpers import conv_proxy

from nessa.client import StorageClient
from nessa.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from nessa.metrics import STORAGE_REGISTRY
from nessa.proxy import Normalization, dumps, export
from nessa.store import ingest_arrays
from nessa.trainer.models import mlp
from nessa.v1 import storage_pb2 as pb
from nessa.v1 import storage_pb2_grpc


def toy_proxy(version: int, num_classes: int = 10, in_features: int = TOY_DIM, hidden=(64,)) -> bytes:  # type: ignore[no-untyped-def]
    torch.manual_seed(version)
    model = mlp(in_features=in_features, num_classes=num_classes, hidden=hidden).eval()
    return dumps(export(model, torch.zeros(1, in_features), quantize="int8", version=version))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proxy-data")
    make_toy(root)
    make_toy(root, name="other", n=500, shards=1)
    make_toy(root, name="other.v2", n=200, shards=1)  # a dotted name: its saved proxy must not clobber "other"'s
    u8 = np.random.default_rng(2).integers(0, 255, size=(40, 3, 8, 8), dtype=np.uint8)
    ingest_arrays(u8, np.arange(40) % 4, root / "images")
    make_toy(root, name="guarded", n=300, shards=1)  # the bad-proxy tests below
    return root


@pytest.fixture(scope="module")
def daemon(root: Path):  # type: ignore[no-untyped-def]
    # warm-up builds the OpenCL kernels; the 50 MB proxy below (a 10^6-wide layer) needs ~2 GiB per forward batch
    with running(root, max_proxy_bytes=96 << 20, max_forward_bytes=4 << 30) as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon):  # type: ignore[no-untyped-def]
    return StorageClient(daemon.address, timeout=60)


def chunks(dataset: str, data: bytes, size: int = 1 << 20, sha: str | None = None, total: int | None = None):  # type: ignore[no-untyped-def]
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    for i, piece in enumerate(pieces):
        msg = pb.ProxyChunk(data=piece)
        if i == 0:
            msg.dataset = dataset
            msg.total_size = len(data) if total is None else total
        if i == len(pieces) - 1:
            msg.sha256 = hashlib.sha256(data).hexdigest() if sha is None else sha
        yield msg


def push_code(daemon, msgs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(daemon.address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            storage_pb2_grpc.StorageStub(ch).PushProxy(iter(list(msgs)), timeout=30)
    return info.value.code(), info.value.details()


def test_push_then_select_craig_on_opencl(client: StorageClient, daemon) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FailedPreconditionError, match="no proxy was pushed"):
        client.select("toy", "craig", 0.1)
    ack = client.push_proxy(toy_proxy(1), "toy")
    assert (ack.dataset, ack.version, ack.previous_version) == ("toy", 1, None)
    assert client.describe("toy").proxy_version == 1
    assert client.bytes_sent["proxy"] == ack.size
    sel = client.select("toy", "craig", 0.1, seed=0, proxy_version=1, engine="opencl")
    assert len(sel) == TOY_N // 10 and len(np.unique(sel.indices)) == len(sel)
    assert sel.proxy_version == 1 and np.isfinite(sel.objective)
    assert sel.weights.mean() == pytest.approx(1.0, rel=1e-4) and (sel.weights > 0).all()
    assert sel.timings.proxy_forward_seconds > 0 and sel.timings.total_seconds >= sel.timings.selection_seconds
    got = sorted(i for b in client.stream(sel) for i in b.indices.tolist())
    assert got == sorted(sel.indices.tolist())
    with pytest.raises(FailedPreconditionError, match="holds proxy version 1"):
        client.select("toy", "craig", 0.1, proxy_version=2)
    # A newer proxy replaces it; the same request on it is a new selection.
    ack2 = client.push_proxy(toy_proxy(2), "toy")
    assert (ack2.version, ack2.previous_version) == (2, 1)
    sel2 = client.select("toy", "craig", 0.1, seed=0)
    assert sel2.id != sel.id and sel2.proxy_version == 2 and not sel2.cached


def test_bad_uploads_are_rejected_and_the_daemon_keeps_serving(client: StorageClient, daemon) -> None:  # type: ignore[no-untyped-def]
    good = toy_proxy(5)
    client.push_proxy(good, "other")
    IA = grpc.StatusCode.INVALID_ARGUMENT
    garbage = np.random.default_rng(0).bytes(300_000)
    cases = [
        (IA, "not a nessa.v1.Proxy", chunks("other", garbage, size=64 << 10)),
        (IA, "checksum mismatch", chunks("other", good, size=4096, sha="0" * 64)),
        (IA, "cut short", chunks("other", good, total=len(good) + 10)),
        (IA, "carries no sha256", chunks("other", good, sha="")),
        (IA, "empty proxy upload", iter([])),
        (IA, "names dataset", [pb.ProxyChunk(dataset="other", data=good[:10]), pb.ProxyChunk(dataset="toy")]),
        (IA, "predicts 4 classes", chunks("other", toy_proxy(6, num_classes=4))),
        (IA, "does not fit the dataset", chunks("other", toy_proxy(6, in_features=33))),
        (IA, "does not fit the dataset", chunks("images", good)),
        (grpc.StatusCode.NOT_FOUND, "no dataset named", chunks("nope", good)),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "over this daemon's limit", chunks("other", good, total=1 << 40)),
    ]
    # A proxy whose bytes were altered after export (valid sha of the altered bytes): its own checksum fails.
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0xFF
    cases.append((IA, "checksum", chunks("other", bytes(tampered))))
    for code, text, msgs in cases:
        got, details = push_code(daemon, msgs)
        assert got == code, (text, details)
        assert text in details, (text, details)
    # Still serving, and still holding the last good proxy.
    assert client.describe("other").proxy_version == 5
    assert client.select("other", "craig", 0.2).proxy_version == 5
    # Through the client: the daemon's status comes back as the domain error.
    with pytest.raises(InvalidArgumentError, match="checksum mismatch"):
        client.push_proxy(bytes(tampered), "other")


def test_a_50mb_proxy_crosses_in_chunks(client: StorageClient) -> None:
    big = toy_proxy(7, hidden=(1_000_000,))
    assert len(big) > 50_000_000
    ack = client.push_proxy(big, "other")
    assert ack.size == len(big) and ack.version == 7
    assert ack.sha256 == hashlib.sha256(big).hexdigest()


def _value(name: str, **labels: str) -> float:
    return STORAGE_REGISTRY.get_sample_value(name, labels) or 0.0


def _wait_for(condition, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_cancelled_selection_stops_the_work(root: Path) -> None:
    with running(root, proxy_batch_size=64, warmup=False, engine="numpy", max_concurrent_selections=1) as d:
        client = StorageClient(d.address)
        client.push_proxy(toy_proxy(1, hidden=(2048, 2048)), "toy")  # seconds of forward work on 6000 samples
        made = _value("nessa_selections_total", dataset="toy", method="craig", cached="false")
        # A finished forward pass is observed in this histogram; a stopped one is not.
        forwards = _value("nessa_proxy_forward_duration_seconds_count", engine="numpy")

        # 1. The deadline passes during the proxy forward pass.
        cancelled = _value("nessa_rpc_cancelled_total", rpc="Select")
        with pytest.raises(grpc.RpcError) as info:
            client.select("toy", "craig", 0.1, seed=42, timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_for(lambda: _value("nessa_rpc_cancelled_total", rpc="Select") > cancelled,
                  "the daemon did not stop the selection whose deadline passed")  # fmt: skip
        _wait_for(lambda: _value("nessa_active_selections") == 0, "the selection slot was not released")

        # 2. The client cancels; meanwhile the one selection slot is taken, so another Select is refused.
        cancelled = _value("nessa_rpc_cancelled_total", rpc="Select")
        future = client.stub.Select.future(
            pb.SelectRequest(dataset="toy", method="craig", fraction=0.1, seed=43), timeout=120
        )
        _wait_for(lambda: _value("nessa_active_selections") == 1, "the selection did not start")
        with pytest.raises(ResourceExhaustedError, match="already running"):  # busy: a client without retries sees it
            StorageClient(d.address, retry_timeout=0).select("toy", "random", 0.1, seed=1)
        future.cancel()
        _wait_for(lambda: _value("nessa_rpc_cancelled_total", rpc="Select") > cancelled,
                  "the daemon did not stop the selection its client cancelled")  # fmt: skip
        _wait_for(lambda: _value("nessa_active_selections") == 0, "the selection slot was not released")

        # Neither forward pass ran to its end, nothing was kept, and the slot and threads serve again.
        assert _value("nessa_proxy_forward_duration_seconds_count", engine="numpy") == forwards
        assert _value("nessa_selections_total", dataset="toy", method="craig", cached="false") == made
        assert len(client.select("toy", "random", 0.1, seed=1)) == TOY_N // 10


def test_proxy_survives_a_restart(root: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running(root, state_dir=state, warmup=False) as d:
        StorageClient(d.address).push_proxy(toy_proxy(9), "other")
        StorageClient(d.address).push_proxy(toy_proxy(3), "other.v2")
    with running(root, state_dir=state, warmup=False) as d:
        client = StorageClient(d.address)
        assert client.describe("other").proxy_version == 9
        assert client.describe("other.v2").proxy_version == 3
        assert client.select("other.v2", "craig", 0.5).proxy_version == 3


def test_crest_forwards_only_its_pools_and_selects_as_on_all_features(client: StorageClient, root: Path) -> None:
    """CREST reads gradients only in its random pools: the daemon forwards just those rows, same result."""
    from nessa.proxy import ProxyEngine, loads
    from nessa.selection import SelectionInputs, create
    from nessa.store import open_dataset

    data = toy_proxy(7)
    client.push_proxy(data, "toy")
    before = _value("nessa_proxy_forward_samples_total", engine="opencl")
    options = {"minibatch_size": 32}
    sel = client.select("toy", "crest", count=96, seed=5, engine="opencl", options=options)
    forwarded = _value("nessa_proxy_forward_samples_total", engine="opencl") - before
    pools = sorted(set().union(*map(set, sel.extras["pools"])))
    assert forwarded == len(pools) < TOY_N // 4, (forwarded, len(pools))
    # The same selector on the proxy's gradients of every sample picks exactly the same samples and weights.
    reader = open_dataset(root / "toy")
    everything = np.arange(len(reader))
    x = reader.read_arrays(everything)
    out = ProxyEngine("opencl").run(loads(data), x, reader.labels)
    full = create("crest", **options).select(
        SelectionInputs(labels=reader.labels, gradients=out.grad_embedding), 96, seed=5
    )
    np.testing.assert_array_equal(sel.indices, full.indices)
    np.testing.assert_allclose(sel.weights, full.weights, rtol=1e-6)
    # A method that reads every candidate still has every candidate forwarded.
    before = _value("nessa_proxy_forward_samples_total", engine="opencl")
    client.select("toy", "craig", 0.05, seed=5, engine="opencl")
    assert _value("nessa_proxy_forward_samples_total", engine="opencl") - before == TOY_N


def test_proxies_that_cannot_run_are_rejected_at_push_and_the_good_one_stays(client: StorageClient, daemon) -> None:  # type: ignore[no-untyped-def]
    good = client.push_proxy(conv_proxy(1), "guarded")
    assert good.version == 1
    torch.manual_seed(0)
    uint8_input = dumps(
        export(mlp(40, 10, (16,)).eval(), torch.zeros(1, 40), version=2, normalization=Normalization(dtype="uint8"))
    )
    cases = [
        # the two proxies of issue 18: uint8 input for a float32 dataset; a conv padding of 2^31
        (grpc.StatusCode.INVALID_ARGUMENT, r"takes uint8 samples but dataset 'guarded' stores float32", uint8_input),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            r"padding has a size of 2147483648, over this daemon.s limit",
            conv_proxy(3, 2**31),
        ),
        # a 300-byte-class proxy asking for a padding of 2^18 (about 1 GiB and seconds per Select)
        (grpc.StatusCode.INVALID_ARGUMENT, r"padding 262144 is larger than its kernel size 5", conv_proxy(4, 2**18)),
        # passes every static check, gives infinite logits: the dry run refuses it
        (grpc.StatusCode.INVALID_ARGUMENT, r"dry run on 8 samples .* non-finite", conv_proxy(6, weight_scale=3e38)),
    ]  # fmt: skip
    for code, message, data in cases:
        got, details = push_code(daemon, chunks("guarded", data))
        assert got == code, (message, details)
        assert re.search(message, details), details
        assert len(details) < 2048
        assert client.describe("guarded").proxy_version == 1
    sel = client.select("guarded", "craig", 0.1, proxy_version=1)
    assert sel.proxy_version == 1 and len(sel) == 30
