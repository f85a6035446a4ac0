"""``nessa demo --quick`` from nothing: generated data, a ``nessa serve`` subprocess, four methods over two seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_KEYS = {
    "seed",
    "final_accuracy",
    "best_accuracy",
    "wall_seconds",
    "bytes_to_trainer",
    "bytes_to_storage",
    "data_wait_seconds",
    "data_wait_fraction",
    "selection_seconds_per_epoch",
    "train_seconds_per_epoch",
    "reached",
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
    targets = report["targets"]
    assert set(targets) == {"full-1pt", "full-0.5pt"}
    assert report["target_accuracy"] == targets["full-1pt"] < targets["full-0.5pt"]
    seeds = report["config"]["seeds"]
    assert len(seeds) == 2
    methods = report["methods"]
    names = ["full", "full-short", "random", "rs2", "infobatch", "craig", "crest"]
    assert [m["method"] for m in methods] == names
    epochs = report["config"]["epochs"]
    for m in methods:
        assert m["fraction"] == (1.0 if m["method"] == "full" else 0.1) and m["label"]
        assert [r["seed"] for r in m["runs"]] == seeds
        for r in m["runs"]:
            assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
            assert all(EPOCH_KEYS <= set(e) for e in r["epochs"])
            assert 0.0 <= r["final_accuracy"] <= r["best_accuracy"] <= 1.0
            assert 0.0 <= r["data_wait_fraction"] <= 1.0
            assert set(r["reached"]) == set(targets)
            for hit in r["reached"].values():  # reached at an epoch's end, within the run
                assert hit is None or 0 < hit["seconds"] <= r["wall_seconds"] + 1e-9
            if m["method"] == "full":
                assert len(r["epochs"]) == epochs
            elif m["method"] == "full-short":  # full data for the steps of a 10 % run: ceil(0.1 · epochs) epochs
                assert 1 <= len(r["epochs"]) <= -(-epochs // 10)
            elif m["method"] == "infobatch":  # the full run's epochs, each pruned
                assert 1 <= len(r["epochs"]) <= epochs
            else:  # trains until the harder target or as many samples as the full run: at most epochs / fraction
                assert 1 <= len(r["epochs"]) <= round(epochs / m["fraction"])
        final = m["summary"]["final_accuracy"]
        assert final["n"] == len(seeds) and final["min"] <= final["median"] <= final["max"]
    full = methods[0]
    assert all(r["final_accuracy"] > 0.5 for r in full["runs"])  # the baseline learns
    assert full["summary"]["targets"]["full-1pt"]["all_reached"]  # the median minus a point: every full run gets there
    by = {m["method"]: m for m in methods}
    craig_runs = by["craig"]["runs"]
    assert all(r["selection_seconds_per_epoch"] > 0 for r in craig_runs)  # the daemon's time is accounted
    equal = {m["method"]: m for m in report["equal_epochs"]["methods"]}
    assert list(equal) == names
    for name in ("random", "rs2", "craig", "crest"):  # equal epochs: a tenth of the samples, about a tenth of the bytes
        for r, f in zip(equal[name]["runs"], full["runs"], strict=True):
            assert len(r["epochs"]) == epochs
            assert r["bytes_to_trainer"] < 0.25 * f["bytes_to_trainer"]
    for r, f in zip(equal["infobatch"]["runs"], full["runs"], strict=True):  # pruned epochs: fewer bytes than full
        assert len(r["epochs"]) == epochs and r["bytes_to_trainer"] < f["bytes_to_trainer"]
    for name in ("random", "rs2", "infobatch", "full-short"):  # no proxy for methods that need none
        assert all(r["bytes_to_storage"] == 0 for r in equal[name]["runs"])
    assert all(r["bytes_to_storage"] > 0 for r in equal["craig"]["runs"])  # craig pushes proxies
    assert report["findings"] and all(isinstance(f, str) for f in report["findings"])
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "time to full-1pt" in proc.stdout and "equal epochs" in proc.stdout and "crest" in proc.stdout
