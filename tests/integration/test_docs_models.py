"""The worked example of docs/models-and-images.md runs as written, against a real daemon (port 0) serving a
generated PNG image folder named as the doc names it (``pets``)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import make_png_folder

from nessa.services.storage.config import DaemonConfig
from nessa.services.storage.server import StorageDaemon
from nessa.store import ingest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "models-and-images.md"
DOC_ADDRESS = "127.0.0.1:50051"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageDaemon]:
    root = tmp_path_factory.mktemp("doc-images")
    (root / "data").mkdir()
    ingest(make_png_folder(root / "photos", 12, seed=0), root / "data" / "pets")
    d = StorageDaemon(
        DaemonConfig(data_dir=root / "data", host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0.0)
    ).start()
    try:
        yield d
    finally:
        d.stop(grace=0.5, drain=0)


def test_the_doc_has_its_worked_example() -> None:
    blocks = python_blocks()
    assert len(blocks) == 1 and "nessa.Selector(" in blocks[0] and DOC_ADDRESS in blocks[0]


def test_the_worked_example_runs(daemon: StorageDaemon, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(python_blocks()[0].replace(DOC_ADDRESS, daemon.address), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split()[1:3] == ["18", "opencl"] for line in lines)
