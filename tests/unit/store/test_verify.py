"""Damaged datasets: verify names the shard and says what is wrong; reads never return short or garbage data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from nessa.errors import DataCorruptionError
from nessa.store import ingest_arrays, open_dataset, verify
from nessa.store.checksum import SampleCorruptionError


def _unique_dataset(tmp_path: Path, sample_bytes: int, n: int = 60, shards: int = 3) -> tuple[Path, np.ndarray]:
    """Samples of random bytes, so any one value's bytes occur once in its shard's data.mdb."""
    x = np.random.default_rng(sample_bytes).integers(0, 256, (n, sample_bytes), dtype=np.uint8)
    (dest,) = ingest_arrays(x, np.arange(n) % 3, tmp_path / "ds", shards=shards)
    return dest, x


def _flip_value_byte(data_mdb: Path, value: bytes) -> None:
    """Flip a byte in the middle of every copy of ``value`` in the file.

    Every copy, because with ``meminit=False`` LMDB's unused page space can hold stale bytes from the writer's
    heap, possibly a copy of the value; the live one is among them.
    """
    blob = bytearray(data_mdb.read_bytes())
    at = blob.find(value)
    assert at >= 0
    while at >= 0:
        blob[at + len(value) // 2] ^= 0xFF
        at = blob.find(value, at + 1)
    data_mdb.write_bytes(bytes(blob))


@pytest.mark.parametrize("sample_bytes", [40, 3072])  # in leaf pages / in overflow pages
def test_flipped_value_byte_is_found(tmp_path: Path, sample_bytes: int) -> None:
    dest, x = _unique_dataset(tmp_path, sample_bytes)
    assert verify(dest).ok
    _flip_value_byte(dest / "shards" / "00001" / "data.mdb", x[25].tobytes())
    with pytest.raises(DataCorruptionError, match=r"(?s)shards/00001: sha256 mismatch.*re-ingest"):
        verify(dest)
    report = verify(dest, raise_on_error=False)
    assert [p.path.name for p in report.problems] == ["00001"]
    assert report.shards_checked == 3
    assert "sample 25" in report.problems[0].what
    # read() checks every value against its checksum: the flipped one is never returned, its neighbours are.
    ds = open_dataset(dest)
    with pytest.raises(SampleCorruptionError, match=r"dataset 'ds', shard 1 \(shards/00001\): sample 25 does not") as e:
        ds.read([24, 25, 26])
    assert (e.value.shard, e.value.indices, e.value.status) == (1, [25], "DATA_LOSS")
    assert str(tmp_path) not in str(e.value)
    with pytest.raises(SampleCorruptionError):
        ds.read_arrays([25])
    assert ds.read([24, 26]) == [x[24].tobytes(), x[26].tobytes()]


def test_truncated_shard(tmp_path: Path) -> None:
    dest, x = _unique_dataset(tmp_path, 3072, n=90)
    data = dest / "shards" / "00002" / "data.mdb"
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size // 2)
    ds = open_dataset(dest)  # the directory is there: opening succeeds, the shard opens lazily
    assert ds.read([0]) == [x[0].tobytes()]
    with pytest.raises(DataCorruptionError, match=r"shards/00002: data.mdb is truncated"):
        ds.read([89])  # never SIGBUS from reading past the end of the mapped file
    with pytest.raises(DataCorruptionError, match=r"shards/00002: data.mdb is truncated"):
        verify(dest)
    with open(data, "r+b") as fh:
        fh.truncate(100)  # shorter than LMDB's meta pages
    problems = verify(dest, raise_on_error=False).problems
    assert len(problems) == 1 and problems[0].path.name == "00002"
    assert "LMDB cannot open it" in problems[0].what or "truncated" in problems[0].what


def test_missing_shard_directory(tmp_path: Path) -> None:
    dest, _ = _unique_dataset(tmp_path, 40)
    shutil.rmtree(dest / "shards" / "00001")
    with pytest.raises(DataCorruptionError, match=r"shards/00001: the shard directory is missing.*nessa verify"):
        open_dataset(dest)
    with pytest.raises(DataCorruptionError, match=r"shards/00001: the shard directory is missing"):
        verify(dest)


def test_missing_data_file(tmp_path: Path) -> None:
    dest, _ = _unique_dataset(tmp_path, 40)
    (dest / "shards" / "00000" / "data.mdb").unlink()
    with pytest.raises(DataCorruptionError, match=r"shards/00000: the shard's data.mdb is missing"):
        open_dataset(dest)
    with pytest.raises(DataCorruptionError, match=r"shards/00000: data.mdb is missing"):
        verify(dest)


def test_shard_swapped_for_another(tmp_path: Path) -> None:
    dest, _ = _unique_dataset(tmp_path, 40, n=60, shards=3)
    other, _ = _unique_dataset(tmp_path / "o", 41, n=60, shards=3)
    shutil.rmtree(dest / "shards" / "00001")
    shutil.copytree(other / "shards" / "00001", dest / "shards" / "00001")
    problems = verify(dest, raise_on_error=False).problems
    assert [p.path.name for p in problems] == ["00001"]
    assert "sizes.npy says" in problems[0].what
    with pytest.raises(DataCorruptionError, match=r"shards/00001: sample 20 has 41 bytes, sizes.npy says 40"):
        open_dataset(dest).read([20])
    with pytest.raises(DataCorruptionError, match=r"shards/00001: sample 20 has 41 bytes, sizes.npy says 40"):
        open_dataset(dest).read_joined([20])  # the shard is not located in the map: the lookup path names it


def test_labels_file_modified(tmp_path: Path) -> None:
    dest, _ = _unique_dataset(tmp_path, 40)
    labels = np.load(dest / "labels.npy")
    labels[0] = (labels[0] + 1) % 3
    np.save(dest / "labels.npy", labels)
    with pytest.raises(DataCorruptionError, match=r"labels.npy: sha256 mismatch"):
        verify(dest)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    dest, x = _unique_dataset(tmp_path, 40)
    _flip_value_byte(dest / "shards" / "00000" / "data.mdb", x[3].tobytes())
    shutil.rmtree(dest / "shards" / "00002")
    report = verify(dest, raise_on_error=False)
    assert [p.path.name for p in report.problems] == ["00000", "00002"]
