"""``nessa demo --quick`` from nothing: generated data, a ``nessa serve`` subprocess, four methods, report, figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHOD_KEYS = {
    "method",
    "fraction",
    "final_accuracy",
    "best_accuracy",
    "wall_seconds",
    "bytes_to_trainer",
    "bytes_to_storage",
    "data_wait_seconds",
    "time_to_target_seconds",
    "epochs",
}
EPOCH_KEYS = {
    "epoch",
    "test_accuracy",
    "train_loss",
    "epoch_seconds",
    "data_wait_seconds",
    "bytes_to_trainer",
    "bytes_to_storage",
    "subset_size",
    "wall_seconds",
}


def test_demo_quick_writes_a_complete_report_and_a_figure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "nessa.cli", "demo", "--quick", "--out", str(out), "--no-progress"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert isinstance(report["target_accuracy"], float)
    methods = report["methods"]
    assert [m["method"] for m in methods] == ["full", "random", "craig", "crest"]
    epochs = report["config"]["epochs"]
    for m in methods:
        assert METHOD_KEYS <= set(m), METHOD_KEYS - set(m)
        assert len(m["epochs"]) == epochs
        assert all(EPOCH_KEYS <= set(e) for e in m["epochs"])
        assert 0.0 <= m["final_accuracy"] <= m["best_accuracy"] <= 1.0
        assert m["time_to_target_seconds"] is None or 0 < m["time_to_target_seconds"] <= m["wall_seconds"] + 1e-9
        assert m["fraction"] == (1.0 if m["method"] == "full" else 0.1)
    full = methods[0]
    assert full["final_accuracy"] > 0.5  # the baseline learns
    assert full["time_to_target_seconds"] is not None
    for m in methods[1:]:  # a tenth of the samples: about a tenth of the bytes
        assert m["bytes_to_trainer"] < 0.25 * full["bytes_to_trainer"]
    assert methods[1]["bytes_to_storage"] == 0 and methods[2]["bytes_to_storage"] > 0  # proxies only when needed
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "time to target" in proc.stdout and "crest" in proc.stdout
