"""Shared pieces of the storage-daemon tests: real datasets written by the store, daemons on port 0."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.server import StorageDaemon
from nessa.store import ingest_arrays

ROOT = Path(__file__).resolve().parents[2]
TOY_N = 6000
TOY_DIM = 40
TOY_CLASSES = 10


def toy_arrays(n: int = TOY_N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D-shaped samples: float32 (n, 40), labels 0..9 (every class present)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % TOY_CLASSES).astype(np.int64)
    centers = rng.normal(size=(TOY_CLASSES, TOY_DIM)).astype(np.float32)
    x = centers[y] + 0.5 * rng.normal(size=(n, TOY_DIM)).astype(np.float32)
    return x.astype(np.float32), y


def make_toy(data_dir: Path, name: str = "toy", n: int = TOY_N, shards: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x, y = toy_arrays(n)
    ingest_arrays(x, y, data_dir / name, shards=shards)
    return x, y


def config(data_dir: Path, **kw: object) -> DaemonConfig:
    """A daemon config for tests: loopback, port 0, metrics on a free port, no drain delay."""
    defaults: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "drain_seconds": 0.0,
        "grace_seconds": 1.0,
        "max_workers": 8,
    }
    defaults.update(kw)
    return DaemonConfig(data_dir=data_dir, **defaults)  # type: ignore[arg-type]


@contextmanager
def running(data_dir: Path, **kw: object) -> Iterator[StorageDaemon]:
    daemon = StorageDaemon(config(data_dir, **kw)).start()
    try:
        yield daemon
    finally:
        daemon.stop(grace=0.5, drain=0)


def health_status(target: str, service: str = "", timeout: float = 5.0) -> int:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status


def nessa_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("nessa")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nessa.cli"]


class ServeProcess:
    """``nessa serve`` in a subprocess; the port it bound is read from its first stdout line."""

    def __init__(self, data_dir: Path, port: int = 0, extra: tuple[str, ...] = (), env: dict[str, str] | None = None):
        cmd = [*nessa_cmd(), "serve", "--data-dir", str(data_dir), "--port", str(port), "--metrics-port", "-1", *extra]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"listening on ([\d.]+):(\d+)", line)
        if match is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"nessa serve did not start: stdout={line!r} stderr={err[-2000:]}")
        self.port = int(match.group(2))
        self.target = f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if health_status(self.target, timeout=2.0) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"daemon at {self.target} not SERVING after {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""


def copy_dataset(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
