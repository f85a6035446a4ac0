"""Tests of nessa.trainer.report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nessa.trainer.report import RunResult, build_report, format_table, plot_report, time_to_accuracy, write_report


def _run(method: str, fraction: float, accs: list[float], epoch_seconds: float, epoch_bytes: int) -> RunResult:
    epochs = [
        {
            "epoch": i,
            "test_accuracy": a,
            "wall_seconds": epoch_seconds * (i + 1),
            "bytes_to_trainer_total": epoch_bytes * (i + 1),
            "bytes_to_storage_total": 100 * (i + 1),
        }
        for i, a in enumerate(accs)
    ]
    return RunResult(
        method=method,
        fraction=fraction,
        epochs=epochs,
        wall_seconds=epoch_seconds * len(accs),
        bytes_to_trainer=epoch_bytes * len(accs),
        bytes_to_storage=100 * len(accs),
        data_wait_seconds=0.1 * len(accs),
    )


def test_report_times_against_full_minus_one_point_and_says_who_wins(tmp_path: Path) -> None:
    results = [
        _run("full", 1.0, [0.80, 0.90, 0.95], 10.0, 1000),
        _run("random", 0.1, [0.60, 0.85, 0.93], 1.0, 100),
        _run("craig", 0.1, [0.70, 0.94, 0.92], 2.0, 100),
    ]
    report = build_report(results, config={"seed": 0})
    assert report["target_accuracy"] == pytest.approx(0.94)
    by = {m["method"]: m for m in report["methods"]}
    assert by["full"]["time_to_target_seconds"] == 30.0
    assert by["random"]["time_to_target_seconds"] is None
    assert by["craig"]["time_to_target_seconds"] == 4.0
    assert by["craig"]["time_to_target_speedup_vs_full"] == pytest.approx(7.5)
    assert by["random"]["speedup_vs_full"] == pytest.approx(10.0)
    assert by["craig"]["final_accuracy"] == 0.92 and by["craig"]["best_accuracy"] == 0.94
    assert any("craig does NOT beat random" in f for f in report["findings"])
    assert any("random did not reach" in f for f in report["findings"])
    assert any("craig reached 94.00% after 4.0 s, 7.50x faster than full data" in f for f in report["findings"])
    slow = build_report([results[0], _run("crest", 0.1, [0.5, 0.6, 0.94], 20.0, 100)])
    assert any("crest reached 94.00% after 60.0 s, 2.00x slower than full data" in f for f in slow["findings"])
    for key in (
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
    ):
        assert key in by["craig"]
    table = format_table(report)
    assert "not reached" in table and "craig" in table and "94.00%" in table
    path = write_report(report, tmp_path)
    assert json.loads(path.read_text())["methods"][2]["method"] == "craig"
    png = plot_report(report, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_time_to_accuracy_is_the_first_epoch_reaching_it() -> None:
    epochs = [{"test_accuracy": a, "wall_seconds": float(i)} for i, a in enumerate([0.1, 0.5, 0.4, 0.6])]
    assert time_to_accuracy(epochs, 0.45) == 1.0
    assert time_to_accuracy(epochs, 0.7) is None
