"""Atomic ingest: kill -9, bad input and crashes mid-publication never leave a partial or half-paired dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.store import ingest, ingest_arrays, open_dataset, verify
from nessa.store.atomic import STAGING_PATTERN, Staging, recover_stale
from nessa.store.manifest import Codec
from nessa.store.writer import Split, ingest_splits


def _staging_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if STAGING_PATTERN.match(p.name)]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_kill_9_during_ingest_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "big"
    cmd = [sys.executable, "-m", "nessa.cli", "ingest", "synthetic", str(dest), "--num-samples", "150000"]
    proc = subprocess.Popen([*cmd, "--test-fraction", "0", "--quiet"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    staged = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for d in _staging_dirs(tmp_path):
                data = d / "big" / "shards" / "00000" / "data.mdb"
                if data.exists() and data.stat().st_size > (4 << 20):  # killed with data half written
                    staged = d
            if staged is not None:
                break
            time.sleep(0.005)
        assert staged is not None, f"ingest ended before it could be killed: rc={proc.poll()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists()  # nothing under the final name
    assert staged.exists()  # its staging directory is left behind ...
    x = np.arange(12, dtype=np.uint8).reshape(6, 2)
    (out,) = ingest_arrays(x, [0, 1, 0, 1, 0, 1], dest)  # ... and the next ingest cleans it up
    assert not staged.exists()
    assert _staging_dirs(tmp_path) == []
    np.testing.assert_array_equal(open_dataset(out).read_arrays(range(6)), x)


def test_bad_input_midway_leaves_nothing(tmp_path: Path) -> None:
    def values():
        yield b"a" * 4
        yield b"b" * 4
        yield b"c" * 5  # wrong size for the codec

    split = Split(labels=np.zeros(3, dtype=np.int64), codec=Codec.raw("u1", (4,)), values=values())
    with pytest.raises(InvalidArgumentError, match=r"sample 2 has 5 bytes but the codec .* needs 4"):
        ingest_splits([split], tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == []


def test_too_few_values_is_an_error(tmp_path: Path) -> None:
    split = Split(labels=np.zeros(3, dtype=np.int64), codec=Codec("bytes"), values=iter([b"x", b"y"]))
    with pytest.raises(InvalidArgumentError, match=r"ended after 2 samples but has 3 labels"):
        ingest_splits([split], tmp_path / "out")
    split = Split(labels=np.zeros(1, dtype=np.int64), codec=Codec("bytes"), values=iter([b"x", b"y"]))
    with pytest.raises(InvalidArgumentError, match=r"more samples than its 1 labels"):
        ingest_splits([split], tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == []


def test_live_staging_is_left_alone(tmp_path: Path) -> None:
    with Staging(tmp_path / "a") as staging:
        assert staging.dir is not None and staging.dir.exists()
        assert recover_stale(tmp_path) == []  # its lock is held: a running ingest
        assert staging.dir.exists()
    assert _staging_dirs(tmp_path) == []  # left without publishing: removed


_CRASH_AFTER_FIRST = """
    import os, sys
    import numpy as np
    import nessa.store.atomic as atomic
    real = getattr(atomic, {fn!r})
    def crash_after_first(src, dst):
        real(src, dst)
        os._exit(9)  # dies with DEST-test moved into place, DEST not yet
    setattr(atomic, {fn!r}, crash_after_first)
    from nessa.store import ingest_arrays
    x = np.full((8, 3), {value}, dtype=np.uint8)
    ingest_arrays(x, np.arange(8) % 2, {dest!r}, x_test=x[:4], y_test=[0, 1, 0, 1], overwrite={overwrite})
"""


def test_crash_between_renames_is_rolled_back(tmp_path: Path) -> None:
    dest = tmp_path / "pair"
    run = _run(_CRASH_AFTER_FIRST.format(fn="_rename_noreplace", value=1, dest=str(dest), overwrite=False))
    assert run.returncode == 9, run.stderr
    assert (tmp_path / "pair-test").exists() and not dest.exists()  # the state a crash can leave ...
    recovered = recover_stale(tmp_path)  # ... which recovery (run by every ingest) undoes: neither
    assert len(recovered) == 1
    assert sorted(os.listdir(tmp_path)) == []


def test_crash_during_overwrite_restores_the_old_pair(tmp_path: Path) -> None:
    dest = tmp_path / "pair"
    old = np.full((5, 3), 7, dtype=np.uint8)
    ingest_arrays(old, [0, 1, 0, 1, 0], dest, x_test=old[:2], y_test=[0, 1])
    old_id = open_dataset(dest).manifest.ingest_id
    run = _run(_CRASH_AFTER_FIRST.format(fn="_exchange", value=2, dest=str(dest), overwrite=True))
    assert run.returncode == 9, run.stderr
    assert open_dataset(tmp_path / "pair-test").manifest.ingest_id != old_id  # new test beside old main
    ingest_arrays(np.zeros((2, 1)), [0, 1], tmp_path / "other")  # any ingest in the directory recovers
    assert sorted(os.listdir(tmp_path)) == ["other", "pair", "pair-test"]
    for path, n in ((dest, 5), (tmp_path / "pair-test", 2)):
        ds = open_dataset(path)
        assert ds.manifest.ingest_id == old_id
        np.testing.assert_array_equal(ds.read_arrays(range(n)), old[:n])
        assert verify(path).ok


def test_overwrite_replaces_atomically(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    old = np.full((6, 4), 1, dtype=np.uint8)
    ingest_arrays(old, np.arange(6) % 2, dest, x_test=old[:2], y_test=[0, 1])
    reader = open_dataset(dest)
    assert reader.read([0]) == [old[0].tobytes()]  # its shard environment is now open
    new = np.full((9, 4), 2, dtype=np.uint8)
    paths = ingest_arrays(new, np.arange(9) % 3, dest, x_test=new[:3], y_test=[0, 1, 2], overwrite=True)
    assert paths == [dest, tmp_path / "d-test"]
    np.testing.assert_array_equal(open_dataset(dest).read_arrays(range(9)), new)
    assert len(open_dataset(tmp_path / "d-test")) == 3
    assert reader.read([5]) == [old[5].tobytes()]  # an open reader keeps its consistent old snapshot
    assert sorted(os.listdir(tmp_path)) == ["d", "d-test"]


def test_overwrite_refuses_a_directory_nessa_did_not_write(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(FailedPreconditionError, match=r"is not a nessa dataset .* will not replace it"):
        ingest_arrays(np.zeros((2, 1)), [0, 1], precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["home"]


def test_destination_created_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "race"

    def values():
        yield b"ab"
        ingest_arrays(np.ones((1, 1)), [0], dest)  # another ingest publishes first
        yield b"cd"

    split = Split(labels=np.zeros(2, dtype=np.int64), codec=Codec("bytes"), values=values())
    with pytest.raises(FailedPreconditionError, match=r"already exists"):
        ingest_splits([split], dest)
    assert len(open_dataset(dest)) == 1
    assert _staging_dirs(tmp_path) == []


def test_generated_pair_appears_together(tmp_path: Path) -> None:
    paths = ingest("digits", tmp_path / "dg", num_samples=100)
    ids = {open_dataset(p).manifest.ingest_id for p in paths}
    assert len(paths) == 2 and len(ids) == 1
