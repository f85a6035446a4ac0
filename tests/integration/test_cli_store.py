"""``nessa ingest``, ``nessa verify`` and ``nessa info`` through ``nessa.cli.main`` and one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nessa.cli import main
from nessa.store import open_dataset


def _flip_last_value(path: Path, x: np.ndarray) -> None:
    # Every occurrence: with meminit=False, unused page space can hold stale copies from the writer's heap.
    data = path / "shards" / "00001" / "data.mdb"
    blob = bytearray(data.read_bytes())
    value = x[-1].tobytes()
    at = blob.find(value)
    assert at >= 0
    while at >= 0:
        blob[at] ^= 0x01
        at = blob.find(value, at + 1)
    data.write_bytes(bytes(blob))


def test_ingest_info_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(0).integers(0, 256, (30, 64), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "src.npz", x=x, y=y)
    dest = tmp_path / "ds"
    assert main(["ingest", str(tmp_path / "src.npz"), str(dest), "--shards", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{dest}: 30 samples, 3 classes, raw uint8 (64,), 2 shard(s)" in out
    np.testing.assert_array_equal(open_dataset(dest).read_arrays(range(30)), x)

    assert main(["info", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "samples:  30" in out and "codec:    raw uint8 (64,)" in out and "shards:   2" in out
    assert "bytes:    1920 (1.9 KiB) stored" in out

    assert main(["info", str(dest), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["num_samples"], info["num_classes"], info["num_shards"], info["bytes"]) == (30, 3, 2, 1920)
    assert info["codec"] == {"kind": "raw", "dtype": "|u1", "shape": [64]}
    assert info["disk_bytes"] > info["bytes"]

    assert main(["verify", str(dest)]) == 0
    assert f"{dest}: ok (2 shard(s), 30 samples" in capsys.readouterr().out

    _flip_last_value(dest, x)
    assert main(["verify", str(dest)]) == 1
    err = capsys.readouterr().err
    assert f"{dest}/shards/00001: sha256 mismatch" in err
    assert "re-ingest the dataset" in err


def test_cli_errors_exit_2_with_a_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(tmp_path / "missing.npz"), str(tmp_path / "d")]) == 2
    assert "nessa ingest: error: source" in capsys.readouterr().err
    assert main(["ingest", "digits", str(tmp_path / "d"), "--quiet", "--num-samples", "50"]) == 0
    assert capsys.readouterr().out == ""  # --quiet: no progress bar, no summary
    assert main(["ingest", "digits", str(tmp_path / "d"), "--quiet"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["ingest", "digits", str(tmp_path / "d"), "--quiet", "--overwrite", "--num-samples", "60"]) == 0
    assert len(open_dataset(tmp_path / "d")) + len(open_dataset(tmp_path / "d-test")) == 60
    assert main(["ingest", "digits", str(tmp_path / "e"), "--shards", "9999"]) == 2
    assert "use --shards" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "digits", str(tmp_path / "f"), "--format", "tsv"])
    assert exc.value.code == 2


def test_cli_parses_shapes_and_columns(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.zeros((4, 12), np.float32), y=[0, 1, 0, 1], w=np.arange(4.0))
    argv = ["ingest", str(tmp_path / "s.npz"), str(tmp_path / "d"), "--sample-shape", "3x2x2", "--column", "w"]
    assert main([*argv, "--quiet"]) == 0
    ds = open_dataset(tmp_path / "d")
    assert ds.sample_shape == (3, 2, 2)
    assert ds.column("w").tolist() == [0.0, 1.0, 2.0, 3.0]


def test_subprocess_ingest_and_verify(tmp_path: Path) -> None:
    dest = tmp_path / "m1d"
    run = subprocess.run(
        [sys.executable, "-m", "nessa.cli", "ingest", "mnist1d", str(dest), "--num-samples", "100", "--shards", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"{dest}: 80 samples, 10 classes, raw float32 (40,), 2 shard(s)" in run.stdout
    assert f"{dest}-test: 20 samples" in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "nessa.cli", "verify", str(dest), f"{dest}-test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(": ok (2 shard(s)") == 2


def test_verify_add_checksums_upgrades_a_dataset_written_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nessa.store import ingest_arrays
    from nessa.store.checksum import CHECKSUMS_FILE

    x = np.random.default_rng(0).integers(0, 256, (30, 16), dtype=np.uint8)
    (dest,) = ingest_arrays(x, np.arange(30) % 3, tmp_path / "old")
    data = json.loads((dest / "manifest.json").read_text())  # as written before per-sample checksums
    del data["sample_checksum"]
    del data["files"][CHECKSUMS_FILE]
    (dest / "manifest.json").write_text(json.dumps(data))
    (dest / CHECKSUMS_FILE).unlink()
    with open_dataset(dest) as reader:
        assert not reader.verified
    assert main(["verify", "--add-checksums", str(dest)]) == 0
    assert "per-sample checksums added" in capsys.readouterr().out
    with open_dataset(dest) as reader:
        assert reader.verified and reader.read([5])[0] == x[5].tobytes()
    assert main(["verify", "--add-checksums", str(dest)]) == 0  # already there: verifies only
    assert "added" not in capsys.readouterr().out
