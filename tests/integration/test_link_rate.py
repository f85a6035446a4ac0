"""``--link-rate``: the daemon paces what it streams and receives through its emulated link (plumbing and accounting;
no timing is asserted, the bucket's arithmetic is tested against a fake clock in tests/unit/services/test_link.py)."""

from __future__ import annotations

import subprocess

import torch
from daemon_helpers import TOY_DIM, ServeProcess, make_toy, nessa_cmd, running

from nessa.client import StorageClient
from nessa.metrics import STORAGE_REGISTRY
from nessa.proxy import dumps, export
from nessa.trainer.models import mlp


def test_the_link_paces_exactly_the_streamed_and_pushed_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_toy(tmp_path)
    with running(tmp_path, warmup=False, link_rate="10Gbit") as d:
        assert STORAGE_REGISTRY.get_sample_value("nessa_link_rate_bytes_per_second") == 1.25e9
        assert d.link is not None
        client = StorageClient(d.address)
        sel = client.select("toy", "random", 0.5, seed=0)
        sent_before, recv_before = d.link.outgoing.granted, d.link.incoming.granted
        batches = list(client.stream(sel, batch_size=500))
        wire = sum(b.payload_bytes + b.metadata_bytes for b in batches)
        assert d.link.outgoing.granted - sent_before == wire  # every streamed byte went through the bucket
        torch.manual_seed(0)
        proxy = dumps(export(mlp(in_features=TOY_DIM, num_classes=10, hidden=(16,)).eval(), torch.zeros(1, TOY_DIM)))
        client.push_proxy(proxy, "toy")
        assert d.link.incoming.granted - recv_before == len(proxy)
        waited = STORAGE_REGISTRY.get_sample_value("nessa_link_wait_seconds_total", {"direction": "send"})
        assert waited is not None and waited >= 0
    with running(tmp_path, warmup=False) as d:
        assert d.link is None
        assert STORAGE_REGISTRY.get_sample_value("nessa_link_rate_bytes_per_second") == 0


def test_serve_logs_the_link_it_emulates_and_refuses_a_bad_rate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_toy(tmp_path)
    serve = ServeProcess(tmp_path, extra=("--link-rate", "1Gbit", "--no-warmup"))
    try:
        serve.wait_serving()
    finally:
        serve.terminate()
    assert "emulating a storage link of 1 Gbit/s (125 MB/s) each way" in serve.stderr()
    bad = subprocess.run([*nessa_cmd(), "serve", "--data-dir", str(tmp_path), "--link-rate", "fast"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode != 0 and len(lines) == 1 and "link rate 'fast' is not a rate" in lines[0], bad.stderr
