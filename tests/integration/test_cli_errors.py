"""Errors a user can act on: each failing ``nessa`` command prints one line, no traceback, the right exit status,
and returns within a 10 s deadline (a deadline on the subprocess, not a speed measurement)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import make_toy, nessa_cmd, running

from nessa.services.storage.server import StorageDaemon

DEADLINE = 10.0
TOKEN = "s3cret-token"


def nessa(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``nessa ARGS``; raises ``subprocess.TimeoutExpired`` if it has not returned within :data:`DEADLINE`."""
    environ = {k: v for k, v in os.environ.items() if k != "NESSA_TOKEN"}
    return subprocess.run(
        [*nessa_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**environ, **(env or {})},
        cwd=cwd,
    )


def error_lines(run: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in run.stderr, run.stderr
    return [line for line in run.stderr.splitlines() if line.strip()]


def one_line(run: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    lines = error_lines(run)
    assert len(lines) == 1, run.stderr
    assert run.returncode == status, (run.returncode, run.stderr)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-errors")
    make_toy(root, "toy", n=600, shards=1)
    make_toy(root, "toy-test", n=200, shards=1)
    return root


@pytest.fixture(scope="module")
def daemon(data_dir: Path) -> Iterator[StorageDaemon]:
    with running(data_dir, token=TOKEN) as d:
        yield d


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_no_daemon_at_the_target_is_one_retry_message_then_one_line() -> None:
    target = f"127.0.0.1:{free_port()}"
    run = nessa("status", "--target", target)
    lines = error_lines(run)
    assert run.returncode == 1
    assert len(lines) == 2, run.stderr
    assert lines[0] == f"no storage daemon answers at {target} yet; retrying for 2 s"
    assert lines[1].startswith(f"nessa status: error: no storage daemon answers at {target}: start one with")
    assert "--target" in lines[1]


def test_train_against_no_daemon_fails_before_training(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    ckpt = tmp_path / "ckpt"
    run = nessa(
        "train", "--target", target, "--dataset", "toy", "--test-dataset", "toy-test", "--checkpoint-dir", str(ckpt)
    )
    lines = error_lines(run)
    assert run.returncode == 1 and len(lines) == 2, run.stderr
    assert f"no storage daemon answers at {target}" in lines[1]
    assert not ckpt.exists()


def test_a_target_without_a_port_means_the_default_port_not_443() -> None:
    run = nessa("status", "--target", "localhost")
    error_lines(run)
    said = run.stdout + run.stderr  # whether or not a daemon of this machine listens on 50051
    assert "localhost:50051" in said and ":443" not in said


def test_a_bad_port_in_the_target_is_a_usage_error() -> None:
    one_line(nessa("status", "--target", "127.0.0.1:99999"), 2, "nessa status: error: --target", "1..65535")
    one_line(nessa("status", "--target", "::1:50051"), 2, "IPv6 address in brackets")


def test_a_missing_or_wrong_token_is_the_daemons_one_line(daemon: StorageDaemon) -> None:
    missing = one_line(nessa("status", "--target", daemon.address), 1, "missing bearer token", "--token")
    assert missing.startswith("nessa status: error:")
    one_line(nessa("status", "--target", daemon.address, "--token", "nope"), 1, "wrong bearer token")
    one_line(
        nessa("train", "--target", daemon.address, "--dataset", "toy", "--test-dataset", "toy-test"),
        1,
        "missing bearer token",
    )


def test_the_token_from_a_file(daemon: StorageDaemon, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    run = nessa("status", "--target", daemon.address, "--token-file", str(token_file))
    assert run.returncode == 0, run.stderr
    one_line(nessa("status", "--target", daemon.address, "--token-file", str(tmp_path / "none")), 2, "token file")
    token_file.write_text("\n")
    one_line(nessa("status", "--target", daemon.address, "--token-file", str(token_file)), 2, "is empty")


def test_status_shows_health_datasets_and_proxy_versions(daemon: StorageDaemon) -> None:
    run = nessa("status", "--target", daemon.address, env={"NESSA_TOKEN": TOKEN})
    assert run.returncode == 0, run.stderr
    assert f"daemon:   {daemon.address} (SERVING)" in run.stdout
    assert "datasets: 2" in run.stdout
    assert "  toy: 600 samples, 10 classes, float32[40], 1 shard(s)" in run.stdout
    assert "no proxy" in run.stdout
    as_json = nessa("status", "--target", daemon.address, "--token", TOKEN, "--json")
    info = json.loads(as_json.stdout)
    assert info["health"] == "SERVING"
    assert {d["name"]: d["num_samples"] for d in info["datasets"]} == {"toy": 600, "toy-test": 200}


def test_select_writes_indices_weights_and_metadata(daemon: StorageDaemon, tmp_path: Path) -> None:
    out = tmp_path / "sel.npz"
    run = nessa(
        "select", "toy", "balanced", "--fraction", "0.1", "--out", str(out), "--target", daemon.address,
        "--token", TOKEN, "--seed", "4",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"{out}: 60 of 600 samples of toy by balanced" in run.stdout
    with np.load(out) as sel:
        indices, weights, meta = sel["indices"], sel["weights"], json.loads(sel["metadata"].item())
    assert indices.dtype == np.int64 and len(set(indices.tolist())) == 60
    assert weights.shape == (60,) and np.all(weights > 0)
    assert meta["method"] == "balanced" and meta["dataset"] == "toy" and meta["seed"] == 4
    # the daemon keeps it: status lists it, by the id the file holds
    status = json.loads(nessa("status", "--target", daemon.address, "--token", TOKEN, "--json").stdout)
    assert meta["id"] in {s["id"] for s in status["selections"]} and status["sessions"] == []
    assert sum(meta["class_counts"].values()) == 60
    # a method that needs model outputs, with no proxy pushed: the daemon's reason, in one line
    one_line(
        nessa("select", "toy", "craig", "--fraction", "0.1", "--out", str(tmp_path / "c.npz"),
              "--target", daemon.address, "--token", TOKEN),
        2,
        "nessa select: error:",
        "proxy",
    )  # fmt: skip
    assert not (tmp_path / "c.npz").exists()


def test_a_busy_metrics_port_is_one_line(data_dir: Path, busy_port: int, daemon: StorageDaemon) -> None:
    one_line(
        nessa("serve", "--data-dir", str(data_dir), "--port", "0", "--metrics-port", str(busy_port)),
        2,
        f"--metrics-port {busy_port}",
        "choose another --metrics-port",
    )
    one_line(
        nessa("serve", "--data-dir", str(data_dir), "--port", str(busy_port), "--metrics-port", "-1"),
        2,
        f"--port {busy_port}: cannot listen on 127.0.0.1:{busy_port}",
        "choose another --port",
    )
    one_line(
        nessa(
            "train", "--target", daemon.address, "--dataset", "toy", "--test-dataset", "toy-test",
            "--metrics-port", str(busy_port), "--token", TOKEN,
        ),
        2,
        f"--metrics-port {busy_port}",
    )  # fmt: skip


def test_demo_checks_methods_and_fraction_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    one_line(nessa("demo", "--quick", "--out", str(out), "--methods", "full,magic"), 2, "unknown method 'magic'")
    one_line(nessa("demo", "--quick", "--out", str(out), "--fraction", "1.5"), 2, "fraction must be in (0, 1]")
    assert not out.exists()


def test_train_fraction_without_a_method_is_a_usage_error() -> None:
    line = one_line(
        nessa("train", "--target", "127.0.0.1:1", "--dataset", "a", "--test-dataset", "b", "--fraction", "0.1"), 2
    )
    assert line.startswith("nessa train: error: --fraction 0.1 needs a selection method: add --method")


def test_argparse_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    one_line(nessa("train", "--epochs", "many"), 2, "nessa train: error:", "--epochs", "(see nessa train --help)")
    one_line(nessa("info", str(tmp_path / "nothing")), 2, "does not exist")
    debug = nessa("info", str(tmp_path / "nothing"), "--debug")
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and debug.stderr.rstrip().splitlines()[-1].startswith("nessa info: error:")
