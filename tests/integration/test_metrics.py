"""Metrics: bytes counters equal what the client received; the /metrics scrape passes `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from daemon_helpers import make_toy, running
from prometheus_client import REGISTRY

from nessa.client import StorageClient
from nessa.errors import NotFoundError

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
    return REGISTRY.get_sample_value("nessa_bytes_sent_total", {"dataset": dataset, "kind": kind}) or 0.0


def test_bytes_counters_equal_what_the_client_received(daemon) -> None:  # type: ignore[no-untyped-def]
    before = {k: sent("mtoy", k) for k in ("samples", "metadata")}
    streamed_before = REGISTRY.get_sample_value("nessa_samples_streamed_total", {"dataset": "mtoy"}) or 0.0
    full_before = REGISTRY.get_sample_value("nessa_bytes_full_epoch_total", {"dataset": "mtoy"}) or 0.0
    client = StorageClient(daemon.address)
    info = client.describe("mtoy")
    sel = client.select("mtoy", "random", 0.1, seed=1)
    received = 0
    for batch in client.stream(sel, batch_size=37, shuffle_seed=2):
        received += len(batch)
    assert received == len(sel)
    assert sent("mtoy", "samples") - before["samples"] == client.bytes_received["samples"] == len(sel) * 160
    assert sent("mtoy", "metadata") - before["metadata"] == client.bytes_received["metadata"]
    streamed = REGISTRY.get_sample_value("nessa_samples_streamed_total", {"dataset": "mtoy"}) - streamed_before
    assert streamed == len(sel)
    # A stream abandoned after two batches: the daemon counts what it handed to the transport, which may include
    # messages in flight that the client never read; never less than the client got.
    mid = sent("mtoy", "samples")
    it = client.stream(sel, batch_size=50)
    next(it), next(it)
    it.close()
    deadline = time.monotonic() + 5
    while (REGISTRY.get_sample_value("nessa_active_streams") or 0.0) > 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the daemon finishes the cancelled stream (and its counting) asynchronously
    assert sent("mtoy", "samples") - mid >= 100 * 160
    full = REGISTRY.get_sample_value("nessa_bytes_full_epoch_total", {"dataset": "mtoy"}) - full_before
    assert full == info.total_bytes
    size = REGISTRY.get_sample_value("nessa_selection_size_samples", {"dataset": "mtoy", "method": "random"})
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
        "nessa_bytes_sent_total",
        "nessa_bytes_full_epoch_total",
        "nessa_samples_streamed_total",
        "nessa_selection_duration_seconds_bucket",
        "nessa_proxy_version",
        "nessa_rpc_errors_total",
        "nessa_dataset_size_bytes",
    ):
        assert name in text, name
    assert 'nessa_rpc_errors_total{code="NOT_FOUND",rpc="DescribeDataset"}' in text
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def test_metrics_module_defines_trainer_metrics() -> None:
    import nessa.metrics as m

    names = {c._name for c in (m.TRAINER_DATA_WAIT, m.TRAINER_EPOCH_DURATION, m.TRAINER_BYTES_RECEIVED)}
    assert names == {"nessa_trainer_data_wait_seconds", "nessa_trainer_epoch_duration_seconds",
                     "nessa_trainer_bytes_received"}  # fmt: skip
    assert Path(m.__file__).name == "metrics.py"
