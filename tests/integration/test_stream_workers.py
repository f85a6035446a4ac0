"""``--workers``: streams served by several processes sharing the port, each sample once, state in the primary."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from daemon_helpers import make_toy, running

from nessa.client import StorageClient
from nessa.metrics import STORAGE_REGISTRY
from nessa.packed import decode_sample_batch
from nessa.v1 import storage_pb2 as pb
from nessa.v1 import storage_pb2_grpc


def _stream(address: str, request: pb.StreamRequest) -> tuple[str, list]:  # type: ignore[type-arg]
    """(serving worker, decoded messages) of one stream over a connection of its own."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.unary_stream(
            "/nessa.v1.Storage/StreamSamples",
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=decode_sample_batch,
        )(request, timeout=30)
        worker = dict(call.initial_metadata())["x-nessa-worker"]
        return worker, list(call)


def test_streams_through_several_workers_deliver_each_sample_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, _ = make_toy(tmp_path)
    with running(tmp_path, warmup=False, workers=3) as d:
        assert d.workers is not None and d.workers.alive() == 2
        assert STORAGE_REGISTRY.get_sample_value("nessa_stream_workers") == 3
        client = StorageClient(d.address)
        sel = client.select("toy", "random", 0.25, seed=3)  # made and kept by the primary
        want = sorted(sel.indices.tolist())
        request = pb.StreamRequest(selection_id=sel.id, batch_size=100, shuffle_seed=7)
        seen: dict[str, list] = {}  # type: ignore[type-arg]
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:  # new connections until two processes answered
            worker, msgs = _stream(d.address, request)
            seen.setdefault(worker, msgs)
        assert len(seen) >= 2, f"every connection went to worker(s) {sorted(seen)}"
        reference = None
        for worker, msgs in seen.items():
            got = [i for m in msgs for i in m.indices.tolist()]
            assert sorted(got) == want, f"worker {worker}"  # each sample once
            assert reference is None or got == reference  # the same order from every process
            reference = got
            for m in msgs:
                for i, blob in zip(m.indices.tolist(), m.samples, strict=True):
                    assert blob == x[i].tobytes()
        # A stream cut short on one worker resumes from its cursor on another: each sample exactly once.
        first, msgs_a = next(iter(seen.items()))
        cut = msgs_a[3].cursor
        rest: list[int] = []
        while time.monotonic() < deadline + 20:
            worker, more = _stream(d.address, pb.StreamRequest(selection_id=sel.id, batch_size=100, shuffle_seed=7,
                                                                cursor=cut))  # fmt: skip
            if worker != first:
                rest = [i for m in more for i in m.indices.tolist()]
                break
        head = [i for m in msgs_a[:4] for i in m.indices.tolist()]
        assert rest and sorted(head + rest) == want
        # Calls a worker forwards reach the primary's state: unknown ids and sessions answer as the primary does.
        for _ in range(6):  # connections of their own, spread over the processes
            with grpc.insecure_channel(d.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = storage_pb2_grpc.StorageStub(channel)
                assert stub.GetSelection(pb.GetSelectionRequest(id=sel.id), timeout=10).size == len(sel)
                with pytest.raises(grpc.RpcError) as info:
                    stub.GetSelection(pb.GetSelectionRequest(id="sel-" + "0" * 24), timeout=10)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert d.workers is not None and d.workers.alive() == 0


def test_worker_count_is_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from daemon_helpers import config

    from nessa.errors import InvalidArgumentError

    make_toy(tmp_path)
    with pytest.raises(InvalidArgumentError, match="workers must be in"):
        config(tmp_path, workers=0)
    assert np.isfinite(config(tmp_path, workers=2).workers)
