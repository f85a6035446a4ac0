"""Distill jobs through a real daemon: stages published atomically, cancellation, restart after kill -9, the CLI."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import ServeProcess, nessa_cmd, running

from nessa.client import StorageClient
from nessa.metrics import STORAGE_REGISTRY
from nessa.store import ingest, open_dataset

TINY = {"num_experts": 2, "iterations": 6, "syn_steps": 4, "transition_epochs": 4}
#: Enough matching work that the job is still running when the test acts on it.
LONG = {"num_experts": 2, "iterations": 100000, "syn_steps": 4, "transition_epochs": 4}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ingest("mnist1d", tmp_path / "m", num_samples=600, test_fraction=0.2)
    return tmp_path


def _names(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if not p.name.startswith("."))


def _wait_phase(client: StorageClient, job_id: str, word: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while word not in client.distill_job(job_id).phase:
        assert time.monotonic() < deadline, f"job never reached {word!r}: {client.distill_job(job_id)}"
        time.sleep(0.05)


def _metric(name: str, **labels: str) -> float:
    return STORAGE_REGISTRY.get_sample_value(name, labels) or 0.0


def test_job_writes_stages_and_group(data_dir: Path) -> None:
    before = _metric("nessa_distill_read_real_bytes_total", dataset="m")
    with running(data_dir) as daemon, StorageClient(daemon.address) as client:
        job = client.distill("m", method="pdd", ipc=2, stages=2, seed=1, options=TINY)
        assert job.state == "running" and job.output == "m-pdd"
        done = client.wait_distill(job.id, timeout=120)
        assert done.state == "done", done.error
        assert done.stages == ("m-pdd-s1", "m-pdd-s2") and len(done.learned_lr) == 2
        assert done.real_bytes_read == 480 * 40 * 4
        assert done.synthetic_bytes_written == 2 * 20 * 40 * 4  # the stages and the group holding them
        assert done.progress == 1.0 and done.seconds > 0
        info = client.describe("m-pdd")
        assert [s["name"] for s in info.source["stages"]] == ["m-pdd-s1", "m-pdd-s2"]
        assert info.source["learned_lr"] == pytest.approx(list(done.learned_lr))
        s2 = client.describe("m-pdd-s2")
        assert (s2.source["distilled_from"], s2.source["method"], s2.source["stage"], s2.source["ipc"]) == (
            "m", "pdd", 2, 1,
        )  # fmt: skip
        assert s2.num_samples == 10
    assert _metric("nessa_distill_read_real_bytes_total", dataset="m") - before == 480 * 40 * 4
    assert _metric("nessa_distill_jobs_total", method="pdd", state="done") >= 1
    with open_dataset(data_dir / "m-pdd") as ds:
        np.testing.assert_array_equal(ds.column("stage"), [1] * 10 + [2] * 10)


def test_bad_requests_are_refused(data_dir: Path) -> None:
    from nessa.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError

    with running(data_dir) as daemon, StorageClient(daemon.address) as client:
        with pytest.raises(NotFoundError):
            client.distill("nope")
        with pytest.raises(InvalidArgumentError, match="multiple of stages"):
            client.distill("m", ipc=3, stages=2)
        with pytest.raises(InvalidArgumentError, match="unknown distillation option"):
            client.distill("m", options={"bogus": 1})
        with pytest.raises(FailedPreconditionError, match="already exists"):
            client.distill("m", output="m-test")
        with pytest.raises(InvalidArgumentError, match="would replace the dataset being distilled"):
            client.distill("m", output="m", overwrite=True)
        with pytest.raises(NotFoundError):
            client.distill_job("dist-0123")


def test_cancel_publishes_nothing(data_dir: Path) -> None:
    with running(data_dir) as daemon, StorageClient(daemon.address) as client:
        job = client.distill("m", method="mtt", ipc=1, stages=1, options=LONG)
        _wait_phase(client, job.id, "matching")
        client.cancel_distill(job.id)
        end = client.wait_distill(job.id, timeout=60)
        assert end.state == "cancelled" and "nothing was published" in end.error
    assert _names(data_dir) == ["m", "m-test"]


def test_killed_daemon_reports_the_job_failed_after_restart(data_dir: Path) -> None:
    first = ServeProcess(data_dir, extra=("--engine", "numpy"))
    try:
        first.wait_serving()
        with StorageClient(first.target) as client:
            job = client.distill("m", method="pdd", ipc=2, stages=2, options=LONG)
            _wait_phase(client, job.id, "matching")
    finally:
        first.kill()
    with running(data_dir) as daemon, StorageClient(daemon.address) as client:
        after = client.distill_job(job.id)
        assert after.state == "failed" and "daemon stopped while this job ran" in after.error
        assert _names(data_dir) == ["m", "m-test"]  # no stage, no group, no leftovers under a final name
        again = client.distill("m", method="dm", ipc=1, stages=1, options={"dm_iterations": 5})
        assert client.wait_distill(again.id, timeout=60).state == "done"


def test_cli_local_and_remote(data_dir: Path) -> None:
    opts = [f"--option={k}={v}" for k, v in TINY.items()]
    local = subprocess.run(
        [*nessa_cmd(), "distill", str(data_dir / "m"), str(data_dir / "loc"), "--ipc", "2", "--stages", "2",
         "--quiet", *opts],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert "2 stage(s)" in local.stdout and (data_dir / "loc-s2" / "manifest.json").is_file()
    with running(data_dir) as daemon:
        remote = subprocess.run(
            [*nessa_cmd(), "distill", "--target", daemon.address, "--dataset", "m", "--method", "dm", "--ipc", "1",
             "--out", "m-dm1", "--quiet", "--option", "dm_iterations=5"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout.startswith("m-dm1: 1 stage(s) by dm")
    bad = subprocess.run([*nessa_cmd(), "distill", "--dataset", "m"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--target" in bad.stderr


def test_cli_follows_and_cancels_a_job(data_dir: Path) -> None:
    def nessa(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*nessa_cmd(), "distill", *argv], capture_output=True, text=True, timeout=120)

    with running(data_dir) as daemon:
        opts = [f"--option={k}={v}" for k, v in LONG.items()]
        started = nessa("--target", daemon.address, "--dataset", "m", "--method", "mtt", "--ipc", "1", "--no-wait",
                        *opts)  # fmt: skip
        assert started.returncode == 0, started.stderr
        job_id = started.stdout.strip()
        shown = nessa("--target", daemon.address, "--job", job_id, "--no-wait")
        assert shown.returncode == 0 and shown.stdout.startswith(f"{job_id}: running"), shown
        cancelled = nessa("--target", daemon.address, "--job", job_id, "--cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        waited = nessa("--target", daemon.address, "--job", job_id)
        assert waited.returncode == 2 and "was cancelled" in waited.stderr
    assert nessa("--cancel").returncode == 2
    assert _names(data_dir) == ["m", "m-test"]
