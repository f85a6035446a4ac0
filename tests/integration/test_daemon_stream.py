"""Streaming limits: a 20 MB sample crosses a 4 MiB client limit; cancelled streams free their server threads."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from daemon_helpers import make_toy, running

from nessa.client import StorageClient
from nessa.errors import ResourceExhaustedError
from nessa.metrics import STORAGE_REGISTRY
from nessa.store import ingest_arrays

BIG = 5_000_000  # float32 elements: 20 MB per sample


def active_streams() -> float:
    return STORAGE_REGISTRY.get_sample_value("nessa_active_streams") or 0.0


def test_a_20mb_sample_crosses_the_default_message_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).random((3, BIG), dtype=np.float32)
    x[1, :10] = 0  # a distinct middle sample
    ingest_arrays(x, np.array([0, 1, 0]), tmp_path / "big")
    with running(tmp_path, warmup=False) as d:
        client = StorageClient(d.address)  # default receive limit: 4 MiB
        assert client.max_message_bytes == 4 << 20
        got = list(client.stream([2, 1, 0, 1], dataset="big", batch_size=8))
        assert [b.indices.tolist() for b in got] == [[2], [1], [0], [1]]
        for b, i in zip(got, [2, 1, 0, 1], strict=True):
            assert b.samples[0] == x[i].tobytes()
            assert b.payload_bytes == x[i].nbytes == 20_000_000
        # It came in pieces of at most 1 MiB: the cursor resumes after whole samples only.
        rest = list(client.stream([2, 1, 0, 1], dataset="big", cursor=got[1].cursor))
        assert [b.indices.tolist() for b in rest] == [[0], [1]]
        sel = client.select("big", "random", count=2, seed=0)
        assert sorted(i for b in client.stream(sel) for i in b.indices.tolist()) == sorted(sel.indices.tolist())


def test_cancelling_streams_frees_their_threads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_toy(tmp_path)
    with running(tmp_path, warmup=False, max_workers=2) as d:
        client = StorageClient(d.address)
        sel = client.select("toy", "random", 1.0)
        base = active_streams()
        for _ in range(4):  # more streams than the daemon has threads, each cancelled after one batch
            it = client.stream(sel, batch_size=1)
            next(it)
            assert active_streams() >= base + 1
            it.close()  # cancels the call
            deadline = time.monotonic() + 5
            while active_streams() > base and time.monotonic() < deadline:
                time.sleep(0.02)
            assert active_streams() == base
        # Both threads are free again: two streams run at once, a third call is refused (not queued forever).
        a, b = client.stream(sel, batch_size=1), client.stream(sel, batch_size=1)
        next(a), next(b)
        impatient = StorageClient(d.address, retry_timeout=0)  # no retries: the refusal itself is seen
        with pytest.raises(ResourceExhaustedError) as info:
            impatient.describe("toy")
        cause = info.value.__cause__
        assert cause.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
        assert "limit of 2 concurrent calls" in cause.details()  # type: ignore[union-attr]
        assert ("x-nessa-retry", "busy") in cause.trailing_metadata()  # type: ignore[union-attr]
        # A patient client retries the busy refusal with backoff and is served once the streams end.
        done = threading.Event()
        result: list[int] = []

        def describe() -> None:
            result.append(client.describe("toy").num_samples)
            done.set()

        worker = threading.Thread(target=describe)
        worker.start()
        deadline = time.monotonic() + 20
        while client.reconnects < 1 and time.monotonic() < deadline:  # refused (busy) at least once
            time.sleep(0.02)
        assert client.reconnects >= 1 and not done.is_set()
        a.close(), b.close()
        assert done.wait(30)
        worker.join()
        assert result == [6000]


def test_a_stream_past_its_deadline_is_stopped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_toy(tmp_path)
    with running(tmp_path, warmup=False, max_workers=2) as d:
        client = StorageClient(d.address)
        sel = client.select("toy", "random", 1.0)
        base = active_streams()
        # 120,000 messages (too many to be buffered or sent within the deadline); the client reads one, then stalls.
        it = client.stream(np.tile(sel.indices, 20), dataset="toy", batch_size=1, timeout=1.0)
        next(it)
        deadline = time.monotonic() + 10
        while active_streams() > base and time.monotonic() < deadline:
            time.sleep(0.02)
        assert active_streams() == base, "the daemon kept streaming after the deadline"
        with pytest.raises(grpc.RpcError) as info:
            list(it)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # not retried: a deadline is the caller's


def test_a_flipped_byte_is_data_loss_at_stream_time_naming_shard_and_index(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nessa.errors import DataCorruptionError

    x = np.random.default_rng(3).integers(0, 256, (40, 64), dtype=np.uint8)
    ingest_arrays(x, np.arange(40) % 4, tmp_path / "ds", shards=2)
    victim = 27  # in the second shard
    path = tmp_path / "ds" / "shards" / "00001" / "data.mdb"
    blob = bytearray(path.read_bytes())
    at = blob.find(x[victim].tobytes())
    assert at >= 0
    blob[at + 5] ^= 0x01
    path.write_bytes(bytes(blob))
    with running(tmp_path, warmup=False) as d:
        client = StorageClient(d.address)
        good = [i for b in client.stream(np.arange(20), dataset="ds") for i in b.indices.tolist()]
        assert good == list(range(20))  # the intact shard is served
        with pytest.raises(DataCorruptionError, match=r"shard 1.*27|27.*shard 1") as err:
            for _ in client.stream(np.arange(40), dataset="ds", batch_size=8):
                pass
        assert str(tmp_path) not in str(err.value)  # no server paths in the message
        counted = STORAGE_REGISTRY.get_sample_value("nessa_corrupt_samples_total", {"dataset": "ds"})
        assert counted is not None and counted >= 1  # the corrupt sample is counted by the daemon
        sel = client.select("ds", "random", count=40, seed=0)  # random reads no sample: it selects
        with pytest.raises(DataCorruptionError, match="27"):  # but the corrupt sample is never streamed
            for _ in client.stream(sel):
                pass
