"""A storage node that runs only the OpenCL engine never imports torch: not at import, not while serving."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
from daemon_helpers import health_status, make_toy, nessa_cmd
from grpc_health.v1 import health_pb2

from nessa.client import StorageClient

_LISTEN = re.compile(r"listening on ([\d.]+):(\d+)")
#: ``-X importtime`` lines: "import time: self | cumulative | name", the name indented by depth.
_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.M)


def wait_serving(target: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if health_status(target, timeout=2.0) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"daemon at {target} not SERVING after {timeout} s")


def test_importing_the_daemon_and_the_serve_command_does_not_import_torch() -> None:
    code = (
        "import sys, nessa.services.storage.server, nessa.cli, nessa.proxy\n"
        "from nessa.cli import build_parser\n"
        "build_parser('serve').parse_args(['serve', '--data-dir', '.'])\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not heavy, heavy[:5]\n"
        "from nessa.proxy import export  # the torch part is still there when asked for\n"
        "assert 'torch.fx' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_nessa_serve_with_the_opencl_engine_serves_without_torch(tmp_path: Path) -> None:
    make_toy(tmp_path, "toy", n=300, shards=1)
    log = tmp_path / "imports.log"
    cmd = [*nessa_cmd(), "serve", "--data-dir", str(tmp_path), "--port", "0", "--metrics-port", "-1"]
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
        )
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            match = _LISTEN.search(line)
            assert match, (line, log.read_text()[-2000:])
            target = f"127.0.0.1:{match.group(2)}"
            wait_serving(target)  # SERVING comes after the OpenCL engine is built (warm-up)
            with StorageClient(target) as client:
                assert [d.name for d in client.datasets()] == ["toy"]
                assert len(client.select("toy", "random", fraction=0.1)) == 30
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    imported = set(_IMPORTED.findall(log.read_text()))
    # the OpenCL engine was loaded with the import log on (its own line is missing: importlib.import_module is not
    # timed by -X importtime, the import statements inside it are)
    assert {"nessa.accel.nn_ops", "pyopencl.array"} <= imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
