"""The storage daemon in-process: every RPC, status codes, selections, streams, health and reflection."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon_helpers import TOY_CLASSES, TOY_DIM, TOY_N, config, health_status, make_toy, running
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nessa.client import StorageClient
from nessa.errors import DataCorruptionError, InvalidArgumentError, NotFoundError, OutOfRangeError
from nessa.order import Partition
from nessa.services.storage.server import StorageDaemon
from nessa.store import ingest_arrays
from nessa.v1 import storage_pb2 as pb
from nessa.v1 import storage_pb2_grpc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("data")
    x, y = make_toy(root)
    # An image-like dataset with variable-size values and a non-dataset directory beside it.
    blobs = np.random.default_rng(1).integers(0, 255, size=(50, 3, 8, 8), dtype=np.uint8)
    ingest_arrays(blobs, np.arange(50) % 5, root / "tiny-u8")
    (root / "not-a-dataset").mkdir()
    # A dataset whose shard is gone: listed nowhere, and looking it up says why.
    ingest_arrays(blobs, np.arange(50) % 5, root / "broken")
    shutil.rmtree(root / "broken" / "shards" / "00000")
    return root, x, y


@pytest.fixture(scope="module")
def daemon(data):  # type: ignore[no-untyped-def]
    root, _, _ = data
    with running(root, warmup=False) as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon):  # type: ignore[no-untyped-def]
    with StorageClient(daemon.address, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def stub(daemon):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(daemon.address) as ch:
        yield storage_pb2_grpc.StorageStub(ch)


def code_of(fn, *args, **kw) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, **kw)
        if hasattr(result, "__iter__") and not isinstance(result, pb.Selection | pb.DatasetInfo):
            list(result)
    return info.value.code(), info.value.details()


def test_list_and_describe(client: StorageClient, data) -> None:  # type: ignore[no-untyped-def]
    _, x, y = data
    names = [d.name for d in client.datasets()]
    assert names == ["tiny-u8", "toy"]
    info = client.describe("toy")
    assert info.num_samples == TOY_N
    assert info.num_classes == TOY_CLASSES
    assert info.class_counts == tuple(np.bincount(y).tolist())
    assert info.codec == "raw"
    assert info.sample_shape == (TOY_DIM,)
    assert info.dtype == "float32"
    assert info.total_bytes == x.nbytes
    assert info.num_shards == 2
    assert info.proxy_version is None


def test_health_and_reflection(daemon) -> None:  # type: ignore[no-untyped-def]
    assert health_status(daemon.address) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(daemon.address, "nessa.v1.Storage") == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(daemon.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    services = {s.name for s in replies[0].list_services_response.service}
    assert {"nessa.v1.Storage", "grpc.health.v1.Health"} <= services


def test_stream_ten_percent_delivers_exactly_the_selection(client: StorageClient, data) -> None:  # type: ignore[no-untyped-def]
    _, x, y = data
    sel = client.select("toy", "random", 0.1, seed=3)
    assert len(sel) == TOY_N // 10
    assert len(np.unique(sel.indices)) == len(sel)
    assert sel.weights.shape == (len(sel),) and sel.num_candidates == TOY_N
    assert sel.selected_bytes == len(sel) * TOY_DIM * 4 and sel.candidate_bytes == x.nbytes
    weight_of = dict(zip(sel.indices.tolist(), sel.weights.tolist(), strict=True))
    seen: list[int] = []
    for batch in client.stream(sel, batch_size=64):
        assert len(batch) <= 64
        for i, label, w, blob in zip(batch.indices, batch.labels, batch.weights, batch.samples, strict=True):
            assert blob == x[i].tobytes()
            assert label == y[i]
            assert w == weight_of[int(i)]
        seen.extend(batch.indices.tolist())
    assert seen == sel.indices.tolist()  # no shuffle: the selection's order, each once


def test_shuffle_is_seeded_and_complete(client: StorageClient) -> None:
    sel = client.select("toy", "balanced", 0.05, seed=1)
    a = np.concatenate([b.indices for b in client.stream(sel, shuffle_seed=7)])
    b = np.concatenate([b.indices for b in client.stream(sel, shuffle_seed=7)])
    c = np.concatenate([b.indices for b in client.stream(sel, shuffle_seed=8)])
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert sorted(a.tolist()) == sorted(sel.indices.tolist()) == sorted(c.tolist())


def test_same_request_is_cached(client: StorageClient) -> None:
    first = client.select("toy", "random", count=100, seed=11)
    again = client.select("toy", "random", count=100, seed=11)
    other = client.select("toy", "random", count=100, seed=12)
    assert again.cached and not first.cached
    assert again.id == first.id != other.id
    assert again.indices.tolist() == first.indices.tolist()


def test_per_class_budget_rule(client: StorageClient, data) -> None:  # type: ignore[no-untyped-def]
    _, _, y = data
    sel = client.select("toy", "random", 0.1, seed=2, budget_rule="proportional")
    counts = np.bincount(y[sel.indices], minlength=TOY_CLASSES)
    expect = -(-np.bincount(y) * (TOY_N // 10) // TOY_N)  # ceil(n_c * k / N)
    assert counts.tolist() == expect.tolist()
    assert sel.budget_rule == "proportional"


def test_candidates_restrict_the_selection(client: StorageClient) -> None:
    cand = np.arange(100, 400)
    sel = client.select("toy", "random", 0.5, candidates=cand)
    assert len(sel) == 150 and set(sel.indices.tolist()) <= set(cand.tolist())
    assert sel.num_candidates == 300


def test_explicit_indices_with_duplicates(client: StorageClient, data) -> None:  # type: ignore[no-untyped-def]
    _, x, _ = data
    idx = [5, 5, 4000, 0, 5999]
    batches = list(client.stream(idx, dataset="toy"))
    got = [b for batch in batches for b in batch.samples]
    assert got == [x[i].tobytes() for i in idx]
    assert all((batch.weights == 1).all() for batch in batches)


def test_batches_are_bounded_in_bytes(client: StorageClient, data) -> None:  # type: ignore[no-untyped-def]
    sel = client.select("toy", "random", 0.5, seed=4)
    sizes = [b.payload_bytes for b in client.stream(sel, batch_size=10000, max_batch_bytes=4000)]
    assert max(sizes) <= 4000 and sum(sizes) == len(sel) * TOY_DIM * 4
    assert len(sizes) == -(-len(sel) // (4000 // (TOY_DIM * 4)))


def test_cursor_resumes_after_the_batch(client: StorageClient) -> None:
    sel = client.select("toy", "random", 0.1, seed=5)
    full = [b.indices.tolist() for b in client.stream(sel, batch_size=50, shuffle_seed=1)]
    it = client.stream(sel, batch_size=50, shuffle_seed=1)
    first = [next(it), next(it)]
    it.close()
    rest = [b.indices.tolist() for b in client.stream(sel, batch_size=50, shuffle_seed=1, cursor=first[-1].cursor)]
    assert [b.indices.tolist() for b in first] + rest == full
    assert first[-1].position == 100 and first[-1].total == len(sel)


def test_partitions_cover_the_selection_once(client: StorageClient) -> None:
    sel = client.select("toy", "random", 0.1, seed=6)
    seen = []
    for rank in range(2):
        for worker in range(3):
            part = Partition(world_size=2, rank=rank, num_workers=3, worker=worker, block_size=8)
            seen.extend(i for b in client.stream(sel, shuffle_seed=9, partition=part) for i in b.indices.tolist())
    assert sorted(seen) == sorted(sel.indices.tolist())


def test_large_selection_is_fetched_as_a_stream(data) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = data
    with running(root, warmup=False, max_message_bytes=128 * 1024, default_batch_bytes=32 * 1024) as d:
        with StorageClient(d.address, max_message_bytes=128 * 1024, chunk_size=32 * 1024) as c:
            sel = c.select("toy", "random", 1.0)
            assert len(sel) == TOY_N and sorted(sel.indices.tolist()) == list(range(TOY_N))
            assert sel.metadata_bytes > TOY_N * 2
        with grpc.insecure_channel(d.address) as ch:
            reply = storage_pb2_grpc.StorageStub(ch).Select(
                pb.SelectRequest(dataset="toy", method="random", fraction=1.0), timeout=10
            )
        assert not reply.inline and len(reply.indices) == 0 and reply.size == TOY_N


def test_selection_survives_a_restart(data) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = data
    state = root.parent / "state-restart"
    with running(root, warmup=False, state_dir=state) as d:
        sel = StorageClient(d.address).select("toy", "random", 0.02, seed=21)
    with running(root, warmup=False, state_dir=state) as d:
        c = StorageClient(d.address)
        got = [i for b in c.stream(sel.id) for i in b.indices.tolist()]
        assert got == sel.indices.tolist()
        assert c.select("toy", "random", 0.02, seed=21).cached


def test_status_codes(stub, client: StorageClient) -> None:  # type: ignore[no-untyped-def]
    NF, IA, OOR, RE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                       grpc.StatusCode.RESOURCE_EXHAUSTED)  # fmt: skip
    sel = client.select("toy", "random", 0.01)
    cases = [
        (NF, "no dataset named 'nope'", stub.DescribeDataset, pb.DescribeDatasetRequest(dataset="nope")),
        (NF, "no dataset named", stub.DescribeDataset, pb.DescribeDatasetRequest(dataset="not-a-dataset")),
        # a removed shard directory is damage (DATA_LOSS), not absence
        (grpc.StatusCode.DATA_LOSS, "is damaged and cannot be served", stub.DescribeDataset,
         pb.DescribeDatasetRequest(dataset="broken")),
        (IA, "never a path", stub.DescribeDataset, pb.DescribeDatasetRequest(dataset="../toy")),
        (IA, "never a path", stub.DescribeDataset, pb.DescribeDatasetRequest(dataset="/etc")),
        (IA, "outside (0, 1]", stub.Select, pb.SelectRequest(dataset="toy", method="random", fraction=1.5)),
        (IA, "outside (0, 1]", stub.Select, pb.SelectRequest(dataset="toy", method="random", fraction=0.0)),
        (IA, "exactly one budget", stub.Select, pb.SelectRequest(dataset="toy", method="random")),
        (IA, "unknown selection method", stub.Select, pb.SelectRequest(dataset="toy", method="zap", fraction=0.1)),
        (IA, "unknown option", stub.Select,
         pb.SelectRequest(dataset="toy", method="random", fraction=0.1, options={"bogus": "1"})),
        (IA, "not a JSON value", stub.Select,
         pb.SelectRequest(dataset="toy", method="random", fraction=0.1, options={"x": "lazy"})),
        (IA, "unknown budget rule", stub.Select,
         pb.SelectRequest(dataset="toy", method="random", fraction=0.1, budget_rule="most")),
        (IA, "unknown proxy engine", stub.Select,
         pb.SelectRequest(dataset="toy", method="crest", fraction=0.1, engine="gpu")),
        (OOR, "outside dataset", stub.Select,
         pb.SelectRequest(dataset="toy", method="random", fraction=0.1, candidates=[1, TOY_N])),
        (NF, "no dataset named", stub.Select, pb.SelectRequest(dataset="nope", method="random", fraction=0.1)),
        (NF, "no selection", stub.StreamSamples, pb.StreamRequest(selection_id="sel-" + "0" * 24)),
        (IA, "not a selection id", stub.StreamSamples, pb.StreamRequest(selection_id="../../etc/passwd")),
        (IA, "needs a source", stub.StreamSamples, pb.StreamRequest(dataset="toy")),
        (IA, "not a stream cursor", stub.StreamSamples, pb.StreamRequest(selection_id=sel.id, cursor="abc")),
        (IA, "another stream", stub.StreamSamples,
         pb.StreamRequest(selection_id=sel.id, cursor="0123456789abcdef.1")),
        (IA, "of dataset 'toy'", stub.StreamSamples, pb.StreamRequest(selection_id=sel.id, dataset="tiny-u8")),
        (IA, "rank 2 is not in", stub.StreamSamples,
         pb.StreamRequest(selection_id=sel.id, partition=pb.Partition(world_size=2, rank=2))),
        (IA, "remainder 7 is unknown", stub.StreamSamples,
         pb.StreamRequest(selection_id=sel.id, partition=pb.Partition(world_size=2, remainder=7))),  # type: ignore[arg-type]
        (OOR, "is outside dataset", stub.StreamSamples,
         pb.StreamRequest(dataset="toy", indices=pb.IndexList(indices=[0, TOY_N]))),
        (OOR, "cannot skip", stub.StreamSamples,
         pb.StreamRequest(selection_id=sel.id, partition=pb.Partition(skip=10**6))),
        (RE, "over this daemon's limit", stub.StreamSamples,
         pb.StreamRequest(selection_id=sel.id, batch_size=10**6)),
        (RE, "over this daemon's limit", stub.StreamSamples,
         pb.StreamRequest(selection_id=sel.id, max_batch_bytes=64 << 20)),
    ]  # fmt: skip
    for code, text, rpc, request in cases:
        got, details = code_of(rpc, request, timeout=10)
        assert got == code, (request, details)
        assert text in details, (text, details)
    # A cursor past the end of its own stream.
    last = list(client.stream(sel))[-1]
    key = last.cursor.split(".")[0]
    got, details = code_of(stub.StreamSamples, pb.StreamRequest(selection_id=sel.id, cursor=f"{key}.{len(sel) + 1}"))
    assert got == OOR and "past the end" in details


def test_client_maps_statuses_to_domain_errors(client: StorageClient) -> None:
    with pytest.raises(NotFoundError, match="no dataset named 'nope'") as info:
        client.describe("nope")
    assert info.value.__cause__.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[union-attr]
    with pytest.raises(InvalidArgumentError, match="unknown selection method"):
        client.select("toy", "zap", 0.1)
    with pytest.raises(OutOfRangeError):
        list(client.stream([TOY_N], dataset="toy"))


def test_encoded_and_small_datasets_stream(client: StorageClient) -> None:
    sel = client.select("tiny-u8", "random", count=7)
    batches = list(client.stream(sel))
    assert sum(len(b) for b in batches) == 7
    assert all(len(s) == 3 * 8 * 8 for b in batches for s in b.samples)


def test_damaged_shard_is_data_loss_and_the_daemon_keeps_serving(data, daemon, client: StorageClient) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = data
    blobs = np.zeros((20, 4), dtype=np.float32)
    ingest_arrays(blobs, np.arange(20) % 2, root / "fragile", shards=2)
    assert client.describe("fragile").num_shards == 2  # opened (shard environments open lazily, on first read)
    shutil.rmtree(root / "fragile" / "shards" / "00001")
    with pytest.raises(DataCorruptionError, match="00001") as info:
        list(client.stream([15], dataset="fragile"))
    assert info.value.__cause__.code() == grpc.StatusCode.DATA_LOSS  # type: ignore[union-attr]
    assert len(list(client.stream([1], dataset="fragile"))) == 1  # the intact shard still serves
    assert client.describe("toy").num_samples == TOY_N


def test_health_is_not_serving_until_warm(data) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = data
    daemon = StorageDaemon(config(root, engine="numpy"))
    gate = threading.Event()
    build = daemon.engines.warmup

    def slow_warmup() -> None:  # the real warm-up, held back until the test has looked at health
        assert gate.wait(30)
        build()

    daemon.engines.warmup = slow_warmup  # type: ignore[method-assign]
    daemon.start(wait_ready=False)
    try:
        NOT_SERVING, SERVING = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
        assert health_status(daemon.address) == NOT_SERVING
        assert health_status(daemon.address, "nessa.v1.Storage") == NOT_SERVING
        assert not daemon.ready.is_set()
        gate.set()
        assert daemon.ready.wait(30)
        assert health_status(daemon.address) == SERVING
        assert health_status(daemon.address, "nessa.v1.Storage") == SERVING
        with pytest.raises(grpc.RpcError) as info:
            health_status(daemon.address, "no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        gate.set()
        daemon.stop(grace=0, drain=0)


def test_old_selections_are_evicted_within_bounds(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = data
    with running(root, warmup=False, state_dir=tmp_path, max_saved_selections=2, selection_cache_bytes=1) as d:
        c = StorageClient(d.address, timeout=10)
        sels = [c.select("toy", "random", count=50, seed=s) for s in range(3)]
        store = d.selections.store
        assert len(store._cache) == 1 and store.held_bytes == store.get(sels[2].id).nbytes  # memory bound
        assert sorted(p.stem for p in (tmp_path / "selections").glob("sel-*.npz")) == sorted(s.id for s in sels[1:])
        with pytest.raises(NotFoundError, match="older than the 2 kept"):
            list(c.stream(sels[0]))
        for sel in sels[1:]:  # evicted from memory, reloaded from disk
            assert [i for b in c.stream(sel) for i in b.indices.tolist()] == sel.indices.tolist()
        again = c.select("toy", "random", count=50, seed=0)  # recomputed, same id (a pure function of the request)
        assert not again.cached and again.id == sels[0].id and again.indices.tolist() == sels[0].indices.tolist()


def test_datasets_linked_from_outside_are_not_served(tmp_path: Path) -> None:
    root, outside = tmp_path / "served", tmp_path / "outside"
    root.mkdir()
    make_toy(root, name="real", n=100, shards=1)
    make_toy(outside, name="secret", n=100, shards=1)
    (root / "linked").symlink_to(outside / "secret", target_is_directory=True)
    (root / "alias").symlink_to(root / "real", target_is_directory=True)  # a link inside the directory is fine
    with running(root, warmup=False) as d:
        c = StorageClient(d.address, timeout=10)
        assert [i.name for i in c.datasets()] == ["alias", "real"]
        with pytest.raises(NotFoundError, match="links outside") as info:
            c.describe("linked")
        assert str(outside) not in str(info.value)  # the message does not reveal where the link points
        with pytest.raises(NotFoundError):
            list(c.stream([0], dataset="linked"))
        for name in ("../outside/secret", str(outside / "secret"), "real/../../outside/secret", "a..b"):
            with pytest.raises(InvalidArgumentError, match="never a path"):
                c.describe(name)
