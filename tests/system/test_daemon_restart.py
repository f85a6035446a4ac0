"""`nessa serve` in a subprocess: a stream survives kill -9 and restart; SIGTERM shuts down gracefully."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from daemon_helpers import ServeProcess, health_status, make_toy
from grpc_health.v1 import health_pb2

from nessa.client import StorageClient


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("serve-data")
    x, _ = make_toy(root)
    return root, x


def test_stream_resumes_after_the_daemon_is_killed_and_restarted(root) -> None:  # type: ignore[no-untyped-def]
    data_dir, x = root
    first = ServeProcess(data_dir, extra=("--engine", "numpy"))
    second: list[ServeProcess] = []
    try:
        client = StorageClient(first.target, retry_timeout=60)
        sel = client.select("toy", "random", 0.1, seed=8)
        stream = client.stream(sel, batch_size=10, shuffle_seed=3)
        got = [next(stream) for _ in range(20)]
        first.kill()  # no goodbye: the connection just drops

        def restart() -> None:
            deadline = time.monotonic() + 30
            while client.reconnects < 1 and time.monotonic() < deadline:  # the client has noticed and retries
                time.sleep(0.01)
            second.append(ServeProcess(data_dir, port=first.port, extra=("--engine", "numpy")))

        t = threading.Thread(target=restart)
        t.start()
        got.extend(stream)
        t.join()
        assert client.reconnects >= 1
        indices = [i for b in got for i in b.indices.tolist()]
        assert len(indices) == len(sel) and sorted(indices) == sorted(sel.indices.tolist())  # each exactly once
        for b in got:
            for i, blob in zip(b.indices, b.samples, strict=True):
                assert blob == x[i].tobytes()
        uninterrupted = [i for b in client.stream(sel, batch_size=10, shuffle_seed=3) for i in b.indices.tolist()]
        assert indices == uninterrupted
    finally:
        first.kill()
        for p in second:
            p.kill()


def test_sigterm_drains_then_finishes_in_flight_streams(root) -> None:  # type: ignore[no-untyped-def]
    data_dir, _ = root
    proc = ServeProcess(data_dir, extra=("--engine", "numpy", "--token", "s3cret"))
    try:
        proc.wait_serving()
        client = StorageClient(proc.target, token="s3cret")
        sel = client.select("toy", "random", 0.5, seed=1)
        stream = client.stream(sel, batch_size=100)
        head = [next(stream)]
        proc.proc.send_signal(15)
        deadline = time.monotonic() + 5
        while health_status(proc.target) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health did not turn NOT_SERVING after SIGTERM"
            time.sleep(0.05)
        rest = list(stream)  # the in-flight stream finishes within the grace period
        assert sum(len(b) for b in head + rest) == len(sel)
        assert proc.proc.wait(timeout=30) == 0
        with pytest.raises(grpc.RpcError) as info:
            StorageClient(proc.target, token="s3cret", retry_timeout=0.5, timeout=2).datasets()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.kill()
