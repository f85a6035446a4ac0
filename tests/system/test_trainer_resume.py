"""kill -9 of ``nessa train --checkpoint-dir`` mid-epoch, then a resume: each sample once, same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainer_helpers import ROOT, config_for, mnist_daemon, train_cmd

from nessa.services.storage.server import StorageDaemon
from nessa.trainer.checkpoint import load_checkpoint
from nessa.trainer.loop import train


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageDaemon]:
    yield from mnist_daemon(tmp_path_factory)


def test_kill_9_mid_epoch_and_resume_matches_an_uninterrupted_run(daemon: StorageDaemon, tmp_path: Path) -> None:
    ckpt, report = tmp_path / "ckpt", tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        train_cmd(daemon.address, ckpt, report), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    killed_at: tuple[int, int] | None = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = load_checkpoint(ckpt) if (ckpt / "checkpoint.pt").exists() else None
            if state is not None and state["next_epoch"] >= 2 and state["current"] is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                killed_at = (state["next_epoch"], state["current"]["position"])
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=30)
    assert killed_at is not None, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not report.exists()
    resumed = subprocess.run(
        train_cmd(daemon.address, ckpt, report), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch" in resumed.stderr
    result = json.loads(report.read_text())
    assert [e["epoch"] for e in result["epochs"]] == [0, 1, 2, 3, 4]
    # the interrupted epoch still trained on each of its selected samples (the stream restarted after them)
    assert all(e["samples"] == e["subset_size"] for e in result["epochs"])
    uninterrupted = train(
        config_for(daemon, method="craig", fraction=0.5, epochs=5, batch_size=64, seed=3, pipeline=True)
    )
    assert abs(result["final_accuracy"] - uninterrupted.final_accuracy) <= 0.02, (
        result["final_accuracy"],
        uninterrupted.final_accuracy,
        killed_at,
    )
