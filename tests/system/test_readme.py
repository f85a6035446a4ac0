"""The README's Python examples run as written, against a real daemon serving a generated MNIST-1D.

Each ```python block of README.md runs in a fresh interpreter; the daemon address the README uses
(127.0.0.1:50051) is replaced by the test daemon's. So the examples cannot rot.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import ServeProcess, nessa_cmd

ROOT = Path(__file__).resolve().parents[2]
README_ADDRESS = "127.0.0.1:50051"


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_the_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 3, "README.md lost its client, torch and library examples"
    assert any("StorageClient(" in b for b in blocks) and any("SelectionLoader" in b for b in blocks)
    assert any("from nessa.selection import" in b for b in blocks)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("readme-data")
    subprocess.run(
        [*nessa_cmd(), "ingest", "mnist1d", str(data / "mnist1d"), "--num-samples", "3000", "--quiet"],
        check=True,
        timeout=300,
    )
    serve = ServeProcess(data)
    try:
        serve.wait_serving()
        yield serve
    finally:
        serve.terminate()


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index: int, daemon: ServeProcess, tmp_path: Path) -> None:
    code = python_blocks()[index]
    uses_daemon = README_ADDRESS in code
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(code.replace(README_ADDRESS, daemon.target), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"README block {index} (daemon: {uses_daemon}) failed:\n{code}\n{proc.stderr[-3000:]}"
