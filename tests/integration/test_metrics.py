"""Metrics: bytes counters equal what the client received; each process's /metrics serves only its own series
(daemon or trainer) and passes `promtool check metrics`; every RPC has its gRPC server metrics."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest
from daemon_helpers import make_toy, running
from prometheus_client import CollectorRegistry

from nessa.client import StorageClient
from nessa.errors import NotFoundError
from nessa.metrics import STORAGE_REGISTRY, TRAINER_REGISTRY, TrainerMetrics, start_metrics_server

PROMTOOL_HINT = (
    "promtool not found: install Debian's prometheus package "
    "(apt-get update && apt-get install -y --no-install-recommends prometheus); .ci/run does this"
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("metrics-data")
    make_toy(root, name="mtoy")
    with running(root, warmup=False) as d:
        yield d


def sent(dataset: str, kind: str) -> float:
    return STORAGE_REGISTRY.get_sample_value("nessa_sent_bytes_total", {"dataset": dataset, "kind": kind}) or 0.0


def test_bytes_counters_equal_what_the_client_received(daemon) -> None:  # type: ignore[no-untyped-def]
    before = {k: sent("mtoy", k) for k in ("samples", "metadata")}
    streamed_before = STORAGE_REGISTRY.get_sample_value("nessa_streamed_samples_total", {"dataset": "mtoy"}) or 0.0
    full_before = STORAGE_REGISTRY.get_sample_value("nessa_full_epoch_bytes_total", {"dataset": "mtoy"}) or 0.0
    client = StorageClient(daemon.address)
    info = client.describe("mtoy")
    sel = client.select("mtoy", "random", 0.1, seed=1)
    received = 0
    for batch in client.stream(sel, batch_size=37, shuffle_seed=2):
        received += len(batch)
    assert received == len(sel)
    assert sent("mtoy", "samples") - before["samples"] == client.bytes_received["samples"] == len(sel) * 160
    assert sent("mtoy", "metadata") - before["metadata"] == client.bytes_received["metadata"]
    streamed = STORAGE_REGISTRY.get_sample_value("nessa_streamed_samples_total", {"dataset": "mtoy"}) - streamed_before
    assert streamed == len(sel)
    # A stream abandoned after two batches: the daemon counts what it handed to the transport, which may include
    # messages in flight that the client never read; never less than the client got.
    mid = sent("mtoy", "samples")
    it = client.stream(sel, batch_size=50)
    next(it), next(it)
    it.close()
    deadline = time.monotonic() + 5
    while (STORAGE_REGISTRY.get_sample_value("nessa_active_streams") or 0.0) > 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the daemon finishes the cancelled stream (and its counting) asynchronously
    assert sent("mtoy", "samples") - mid >= 100 * 160
    full = STORAGE_REGISTRY.get_sample_value("nessa_full_epoch_bytes_total", {"dataset": "mtoy"}) - full_before
    assert full == info.total_bytes
    size = STORAGE_REGISTRY.get_sample_value("nessa_selection_size_samples", {"dataset": "mtoy", "method": "random"})
    assert size == len(sel)


def test_scrape_passes_promtool(daemon) -> None:  # type: ignore[no-untyped-def]
    promtool = shutil.which("promtool")
    assert promtool is not None, PROMTOOL_HINT
    client = StorageClient(daemon.address)
    sel = client.select("mtoy", "balanced", 0.05)
    list(client.stream(sel))
    with pytest.raises(NotFoundError):
        client.describe("nope")
    body = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10).read()
    text = body.decode()
    for name in (
        "nessa_sent_bytes_total",
        "nessa_full_epoch_bytes_total",
        "nessa_streamed_samples_total",
        "nessa_selection_duration_seconds_bucket",
        "nessa_proxy_version",
        "nessa_rpc_errors_total",
        "nessa_dataset_size_bytes",
    ):
        assert name in text, name
    assert 'nessa_rpc_errors_total{code="NOT_FOUND",rpc="DescribeDataset"}' in text
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def _families(body: str) -> set[str]:
    """The metric families a /metrics scrape declares (its ``# TYPE`` lines; counters without ``_total``)."""
    return {line.split()[2].removesuffix("_total") for line in body.splitlines() if line.startswith("# TYPE ")}


def _nessa_families(registry: CollectorRegistry) -> set[str]:
    return {f.name for f in registry.collect() if f.name.startswith("nessa_")}


def _grpc(method: str, kind: str, **extra: str) -> dict[str, str]:
    return {"grpc_service": "nessa.v1.Storage", "grpc_method": method, "grpc_type": kind, **extra}


def _value(name: str, labels: dict[str, str]) -> float:
    return STORAGE_REGISTRY.get_sample_value(name, labels) or 0.0


def test_grpc_server_metrics_for_every_rpc(daemon) -> None:  # type: ignore[no-untyped-def]
    # Every method of nessa.v1.Storage has its series from the start, so increase() sees the first call.
    from nessa.v1 import storage_pb2

    for method in storage_pb2.DESCRIPTOR.services_by_name["Storage"].methods:
        kind = {(False, False): "unary", (True, False): "client_stream", (False, True): "server_stream"}[
            (method.client_streaming, method.server_streaming)
        ]
        assert (
            STORAGE_REGISTRY.get_sample_value("nessa_grpc_server_started_total", _grpc(method.name, kind)) is not None
        )

    describe_ok = _grpc("DescribeDataset", "unary", grpc_code="OK")
    describe_missing = _grpc("DescribeDataset", "unary", grpc_code="NOT_FOUND")
    stream_ok = _grpc("StreamSamples", "server_stream", grpc_code="OK")
    before = {
        "started": _value("nessa_grpc_server_started_total", _grpc("DescribeDataset", "unary")),
        "ok": _value("nessa_grpc_server_handled_total", describe_ok),
        "missing": _value("nessa_grpc_server_handled_total", describe_missing),
        "missing_timed": _value("nessa_grpc_server_handling_seconds_count", describe_missing),
        "stream": _value("nessa_grpc_server_handled_total", stream_ok),
    }
    client = StorageClient(daemon.address)
    client.describe("mtoy")
    with pytest.raises(NotFoundError):
        client.describe("nope")
    sel = client.select("mtoy", "random", 0.05, seed=3)
    list(client.stream(sel, batch_size=64))
    assert _value("nessa_grpc_server_started_total", _grpc("DescribeDataset", "unary")) - before["started"] == 2
    assert _value("nessa_grpc_server_handled_total", describe_ok) - before["ok"] == 1
    assert _value("nessa_grpc_server_handled_total", describe_missing) - before["missing"] == 1
    assert _value("nessa_grpc_server_handling_seconds_count", describe_missing) - before["missing_timed"] == 1
    # A server stream is handled once its generator ends, just after the client read the last message.
    deadline = time.monotonic() + 5
    while _value("nessa_grpc_server_handled_total", stream_ok) == before["stream"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _value("nessa_grpc_server_handled_total", stream_ok) - before["stream"] == 1
    assert _value("nessa_grpc_server_handled_total", _grpc("Select", "unary", grpc_code="OK")) >= 1


def test_each_process_serves_only_its_own_series(daemon) -> None:  # type: ignore[no-untyped-def]
    promtool = shutil.which("promtool")
    assert promtool is not None, PROMTOOL_HINT
    storage_names, trainer_names = _nessa_families(STORAGE_REGISTRY), _nessa_families(TRAINER_REGISTRY)
    assert storage_names & trainer_names == {"nessa_build_info"}
    assert all(n.startswith("nessa_trainer_") for n in trainer_names - {"nessa_build_info"})
    assert not any(n.startswith("nessa_trainer_") for n in storage_names)

    # The daemon's /metrics: daemon series only.
    daemon_body = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10).read().decode()
    daemon_families = {f for f in _families(daemon_body) if f.startswith("nessa_")}
    assert not daemon_families & (trainer_names - {"nessa_build_info"}), sorted(daemon_families & trainer_names)
    assert {"nessa_sent_bytes", "nessa_grpc_server_handled", "nessa_build_info"} <= daemon_families

    # A trainer's /metrics: trainer series only, every one labelled with its method and run.
    metrics = TrainerMetrics(TRAINER_REGISTRY, method="craig", run="only-own-series", datasets=["mtoy"])
    metrics.epoch_duration.observe(1.5)
    metrics.received_bytes("mtoy", "samples").inc(160)
    metrics.accuracy("test").set(0.5)
    metrics.set_run_info(dataset="mtoy", fraction=0.1, model="mlp")
    server = start_metrics_server(0, TRAINER_REGISTRY, host="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read()
    finally:
        server.shutdown()
        server.server_close()
    text = body.decode()
    trainer_families = {f for f in _families(text) if f.startswith("nessa_")}
    assert not trainer_families & (storage_names - {"nessa_build_info"}), sorted(trainer_families & storage_names)
    assert {"nessa_trainer_epoch_duration_seconds", "nessa_trainer_received_bytes", "nessa_build_info"} <= (
        trainer_families
    )
    for line in text.splitlines():
        if line.startswith("nessa_trainer_"):
            assert 'method="' in line and 'run="' in line, line
    assert 'nessa_trainer_accuracy_ratio{method="craig",run="only-own-series",split="test"} 0.5' in text
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()

    # Another registry holds a separate set of the same families.
    private = CollectorRegistry()
    TrainerMetrics(private, method="full", run="r").epoch.set(3)
    assert private.get_sample_value("nessa_trainer_epoch", {"method": "full", "run": "r"}) == 3
    assert TRAINER_REGISTRY.get_sample_value("nessa_trainer_epoch", {"method": "full", "run": "r"}) is None
