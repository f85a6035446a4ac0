"""Fair slots: stalled and unauthenticated streams cannot lock an authenticated client out of the daemon."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon_helpers import running
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nessa.client import StorageClient
from nessa.errors import ResourceExhaustedError
from nessa.metrics import STALLED_STREAMS
from nessa.store import ingest_arrays
from nessa.v1 import storage_pb2 as pb
from nessa.v1 import storage_pb2_grpc

TOKEN = "s3cret-token"
WIDE = 16384  # float32 per sample: 64 KiB, so a few replies fill a stalled client's flow-control window
N = 400


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fair")
    x = np.random.default_rng(0).random((N, WIDE), dtype=np.float32)
    ingest_arrays(x, np.arange(N) % 4, root / "wide")
    return root


def _stalled_count() -> float:
    return STALLED_STREAMS.labels(rpc="StreamSamples")._value.get()


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stalled_stream(channel: grpc.Channel, client_id: str | None, token: str | None = TOKEN) -> grpc.Future:
    """A StreamSamples call that is never read."""
    meta = []
    if token is not None:
        meta.append(("authorization", f"Bearer {token}"))
    if client_id is not None:
        meta.append(("x-nessa-client", client_id))
    # Every sample 16 times over (100 MiB): far more than any flow-control window, so the daemon must block.
    request = pb.StreamRequest(dataset="wide", indices=pb.IndexList(indices=list(range(N)) * 16))
    return storage_pb2_grpc.StorageStub(channel).StreamSamples(request, metadata=meta, timeout=120)


def _watches(channel: grpc.Channel, n: int) -> list[Iterator[health_pb2.HealthCheckResponse]]:
    """``n`` unauthenticated health Watch streams, each having received its first status."""
    stub = health_pb2_grpc.HealthStub(channel)
    calls = [stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120) for _ in range(n)]
    for call in calls:
        next(call)
    return calls


def test_stalled_and_unauthenticated_streams_do_not_lock_out_an_authenticated_client(data_dir: Path) -> None:
    with (
        running(data_dir, warmup=False, token=TOKEN, max_workers=16, max_streams_per_client=8) as d,
        ExitStack() as stack,
    ):
        channel = stack.enter_context(grpc.insecure_channel(d.address))
        watches = _watches(channel, 20)  # more than the 16 RPC slots; health holds none
        stack.callback(lambda: [w.cancel() for w in watches])  # type: ignore[attr-defined]
        # Unauthenticated streams are refused before they take a slot.
        for _ in range(16):
            refused = _stalled_stream(channel, "anon", token=None)
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        # One client opens 16 streams and reads none: it gets its 8, the other 8 are refused at once.
        stalled = [_stalled_stream(channel, "staller") for _ in range(16)]
        stack.callback(lambda: [c.cancel() for c in stalled])
        assert d.slots is not None
        assert _until(lambda: sum(c.done() for c in stalled) == 8), "8 streams over the per-client limit refused"
        over = [c for c in stalled if c.done()]
        assert {c.code() for c in over} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "max_streams_per_client" in over[0].details()
        assert d.slots.streams.in_use == 8
        # The authenticated client is served: health, a unary call and a whole stream.
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        client = StorageClient(d.address, token=TOKEN, retry_timeout=0)
        assert [info.name for info in client.datasets()] == ["wide"]
        got = [i for b in client.stream(list(range(50)), dataset="wide") for i in b.indices.tolist()]
        assert got == list(range(50))
        assert all(not c.done() for c in stalled if c not in over)  # the stalled ones are still open


def test_stalled_streams_holding_every_slot_are_cancelled_after_the_idle_timeout(data_dir: Path) -> None:
    before = _stalled_count()
    with (
        running(data_dir, warmup=False, token=TOKEN, max_workers=16, stream_idle_seconds=1.0) as d,
        ExitStack() as stack,
    ):
        channel = stack.enter_context(grpc.insecure_channel(d.address))
        stalled = [_stalled_stream(channel, f"staller-{i}") for i in range(16)]  # 16 clients: every slot
        stack.callback(lambda: [c.cancel() for c in stalled])
        assert d.slots is not None
        slots = d.slots
        # Every slot held (or the first already past the timeout): a call either waits or is served.
        assert _until(lambda: slots.calls.in_use == 16 or _stalled_count() > before)
        client = StorageClient(d.address, token=TOKEN, retry_timeout=60)  # retries the busy refusal
        assert [info.name for info in client.datasets()] == ["wide"]
        assert _until(lambda: _stalled_count() - before == 16)
        assert _until(lambda: slots.calls.in_use == 0)
        # A stalled client that reads again gets what was already sent, then CANCELLED (not a silent end).
        with pytest.raises(grpc.RpcError) as info:
            for _ in stalled[0]:
                pass
        assert info.value.code() == grpc.StatusCode.CANCELLED
        got = [i for b in client.stream(list(range(N)), dataset="wide") for i in b.indices.tolist()]
        assert got == list(range(N))


def test_a_busy_daemon_refuses_with_the_limit_and_a_retry_hint(data_dir: Path) -> None:
    with running(data_dir, warmup=False, max_workers=2, stream_idle_seconds=30.0) as d, ExitStack() as stack:
        channel = stack.enter_context(grpc.insecure_channel(d.address))
        stalled = [_stalled_stream(channel, f"c{i}", token=None) for i in range(2)]
        stack.callback(lambda: [c.cancel() for c in stalled])
        assert d.slots is not None
        slots = d.slots
        assert _until(lambda: slots.calls.in_use == 2)
        with pytest.raises(ResourceExhaustedError, match="limit of 2 concurrent calls"):
            StorageClient(d.address, retry_timeout=0).datasets()


def test_a_push_whose_client_stops_sending_is_cancelled_and_the_good_proxy_stays(data_dir: Path) -> None:
    from proxy_helpers import mlp_proxy

    before = STALLED_STREAMS.labels(rpc="PushProxy")._value.get()
    with running(data_dir, warmup=False, stream_idle_seconds=1.0, engine="numpy") as d:
        client = StorageClient(d.address)
        good = mlp_proxy(1, in_features=WIDE, num_classes=4)
        assert client.push_proxy(good, "wide").version == 1
        release = threading.Event()

        def chunks() -> Iterator[pb.ProxyChunk]:
            yield pb.ProxyChunk(dataset="wide", data=good[:1000], total_size=len(good))
            release.wait(60)  # the client stops sending

        with grpc.insecure_channel(d.address) as channel:
            future = storage_pb2_grpc.StorageStub(channel).PushProxy.future(chunks(), timeout=60)
            assert _until(lambda: STALLED_STREAMS.labels(rpc="PushProxy")._value.get() > before)
            release.set()
            with pytest.raises(grpc.RpcError) as info:
                future.result(timeout=30)
            assert info.value.code() == grpc.StatusCode.CANCELLED
        assert client.describe("wide").proxy_version == 1


def test_health_watches_are_bounded_and_hold_no_storage_slot(data_dir: Path) -> None:
    with running(data_dir, warmup=False, max_health_watches=3, max_workers=2) as d, ExitStack() as stack:
        channel = stack.enter_context(grpc.insecure_channel(d.address))
        watches = _watches(channel, 3)
        stack.callback(lambda: [w.cancel() for w in watches])  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            next(health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_health_watches" in (info.value.details() or "")
        assert d.slots is not None and d.slots.calls.in_use == 0
        assert [i.name for i in StorageClient(d.address, retry_timeout=0).datasets()] == ["wide"]
        watches[0].cancel()  # type: ignore[attr-defined]
        assert _until(lambda: d.slots is not None and d.slots.watches.in_use == 2)
        extra = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(extra).status == health_pb2.HealthCheckResponse.SERVING
        extra.cancel()
