"""Distilled stages stored as datasets: manifests, the group's stage list, all-or-nothing publication."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nessa.distill import distill
from nessa.distill.store import GROUP_KIND, group_stages, load_arrays, write_distilled
from nessa.errors import FailedPreconditionError
from nessa.store import open_dataset

TINY = {"num_experts": 2, "iterations": 5, "syn_steps": 4, "transition_epochs": 5}


def test_group_and_stage_manifests(mnist1d_small, tmp_path: Path) -> None:
    x, y, _, _ = mnist1d_small
    res = distill(x, y, method="pdd", ipc=2, stages=2, seed=3, options=TINY)
    paths = write_distilled(res, tmp_path / "m-pdd", distilled_from="m", extra={"job": "j1"})
    assert [p.name for p in paths] == ["m-pdd", "m-pdd-s1", "m-pdd-s2"]
    for i, p in enumerate(paths[1:], start=1):
        with open_dataset(p) as ds:
            src = ds.manifest.source
            assert (src["distilled_from"], src["method"], src["stage"], src["ipc"]) == ("m", "pdd", i, 1)
            assert src["learned_lr"] == pytest.approx(res.stages[i - 1].lr)
            np.testing.assert_array_equal(ds.read_arrays(np.arange(len(ds))), res.stages[i - 1].x)
    gx, _gy, manifest = load_arrays(paths[0])
    assert manifest.source["kind"] == GROUP_KIND and manifest.source["job"] == "j1"
    stages = group_stages(manifest.source)
    assert [(s.name, s.stage, s.offset, s.count) for s in stages] == [("m-pdd-s1", 1, 0, 10), ("m-pdd-s2", 2, 10, 10)]
    np.testing.assert_array_equal(gx[10:], res.stages[1].x)
    with open_dataset(paths[0]) as ds:
        np.testing.assert_array_equal(ds.column("stage"), [1] * 10 + [2] * 10)
    with pytest.raises(FailedPreconditionError, match="already exists"):
        write_distilled(res, tmp_path / "m-pdd", distilled_from="m")
    with pytest.raises(FailedPreconditionError, match="not a distilled group"):
        group_stages(json.loads(json.dumps({"kind": "mnist1d"})))


_WRITER = """
import sys, numpy as np
from nessa.distill.pdd import DistillOptions, DistillResult, Stage
from nessa.distill.store import write_distilled
rng = np.random.default_rng(0)
stages = [Stage(rng.random((400_000, 40), dtype=np.float32), np.arange(400_000) % 10, 0.1) for _ in range(3)]
print("writing", flush=True)
write_distilled(DistillResult("pdd", 3, stages, DistillOptions(), 0), sys.argv[1], distilled_from="m")
"""


def test_killed_writer_leaves_no_stage(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "big")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    import time

    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".big.tmp-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, "the writer never staged anything"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # no stage, no group
