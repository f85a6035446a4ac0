"""Per-sample checksums: written at ingest, checked on every read, added to old datasets by add_checksums."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from nessa.errors import DataCorruptionError
from nessa.store import ingest_arrays, open_dataset, verify
from nessa.store.checksum import CHECKSUMS_FILE, SampleCorruptionError, checksum
from nessa.store.verify import add_checksums


def _dataset(tmp_path: Path, n: int = 50, sample_bytes: int = 64, shards: int = 2) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(1).integers(0, 256, (n, sample_bytes), dtype=np.uint8)
    (dest,) = ingest_arrays(x, np.arange(n) % 2, tmp_path / "legacy", shards=shards)
    return dest, x


def _make_legacy(dest: Path) -> None:
    """What a dataset written before per-sample checksums looks like: no checksums.npy, no manifest key."""
    data = json.loads((dest / "manifest.json").read_text())
    del data["sample_checksum"]
    del data["files"][CHECKSUMS_FILE]
    (dest / "manifest.json").write_text(json.dumps(data))
    (dest / CHECKSUMS_FILE).unlink()


def _flip(dest: Path, shard: str, value: bytes) -> None:
    path = dest / "shards" / shard / "data.mdb"
    blob = bytearray(path.read_bytes())
    at = blob.find(value)
    while at >= 0:
        blob[at + 3] ^= 0x01
        at = blob.find(value, at + 1)
    path.write_bytes(bytes(blob))


def test_ingest_records_one_checksum_per_sample(tmp_path: Path) -> None:
    dest, x = _dataset(tmp_path)
    sums = np.load(dest / CHECKSUMS_FILE)
    assert sums.dtype == np.dtype("<u8") and sums.shape == (len(x),)
    assert [int(s) for s in sums] == [checksum(row.tobytes()) for row in x]
    with open_dataset(dest) as ds:
        assert ds.verified


def test_legacy_dataset_opens_with_a_warning_and_is_upgraded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dest, x = _dataset(tmp_path)
    _make_legacy(dest)
    with caplog.at_level(logging.WARNING, logger="nessa.store"):
        ds = open_dataset(dest)
    assert not ds.verified
    assert "no per-sample checksums" in caplog.text and "--add-checksums" in caplog.text
    assert ds.read([3, 40]) == [x[3].tobytes(), x[40].tobytes()]
    ds.close()
    assert verify(dest).ok
    assert add_checksums(dest) is True
    assert add_checksums(dest) is False  # already there: nothing changes
    assert verify(dest).ok
    with open_dataset(dest) as ds:
        assert ds.verified
        assert ds.read([3, 40]) == [x[3].tobytes(), x[40].tobytes()]
    _flip(dest, "00001", x[40].tobytes())
    with open_dataset(dest) as ds, pytest.raises(SampleCorruptionError, match=r"shard 1 .*sample 40 does not match"):
        ds.read([3, 40])


def test_a_corrupt_legacy_dataset_is_not_upgraded(tmp_path: Path) -> None:
    dest, x = _dataset(tmp_path)
    _make_legacy(dest)
    _flip(dest, "00000", x[7].tobytes())
    before = (dest / "manifest.json").read_bytes()
    with pytest.raises(DataCorruptionError, match=r"sha256 mismatch"):
        add_checksums(dest)
    assert (dest / "manifest.json").read_bytes() == before
    assert not (dest / CHECKSUMS_FILE).exists()


def test_modified_checksums_file_is_found_by_verify(tmp_path: Path) -> None:
    dest, _x = _dataset(tmp_path)
    sums = np.load(dest / CHECKSUMS_FILE)
    sums[5] ^= 1
    np.save(dest / CHECKSUMS_FILE, sums)
    problems = verify(dest, raise_on_error=False).problems
    assert [p.path.name for p in problems] == [CHECKSUMS_FILE]
    assert "sha256 mismatch" in problems[0].what


def test_every_corrupt_sample_of_a_read_is_named_and_none_returned(tmp_path: Path) -> None:
    dest, x = _dataset(tmp_path, n=40, shards=1)
    _flip(dest, "00000", x[10].tobytes())
    _flip(dest, "00000", x[30].tobytes())
    with open_dataset(dest) as ds:
        with pytest.raises(SampleCorruptionError) as info:
            ds.read([30, 1, 10])
        assert info.value.indices == [10, 30]
        assert "sample 10 and 1 more" in str(info.value)
        assert ds.read([1, 2]) == [x[1].tobytes(), x[2].tobytes()]


@pytest.mark.parametrize("sample_bytes", [64, 5000])  # values inside LMDB's leaf pages, and on overflow pages
def test_read_joined_is_the_prefix_and_the_values_in_order_and_checks_them(tmp_path: Path, sample_bytes: int) -> None:
    dest, x = _dataset(tmp_path, sample_bytes=sample_bytes)
    order = [40, 3, 3, 49, 0, 26]  # both shards, a duplicate, out of order
    with open_dataset(dest) as ds:
        for _ in range(2):  # the first read locates the values in the map, the second uses that
            assert ds.read_joined(order, b"head") == b"head" + b"".join(x[i].tobytes() for i in order)
        assert ds.read_joined([7], b"") == x[7].tobytes()  # one shard
        assert ds.read_joined([], b"head") == b"head"
        rng = np.random.default_rng(0)
        for _ in range(5):
            pick = rng.choice(len(x), 17)
            assert ds.read_joined(pick) == b"".join(ds.read(pick))
    _flip(dest, "00001", x[40].tobytes())
    with open_dataset(dest) as ds, pytest.raises(SampleCorruptionError, match=r"shard 1 .*sample 40 does not match"):
        ds.read_joined([3, 40], b"head")


def test_read_joined_in_a_forked_child_and_without_checksums(tmp_path: Path) -> None:
    import multiprocessing

    dest, x = _dataset(tmp_path, sample_bytes=3072)
    with open_dataset(dest) as ds:
        want = ds.read_joined([1, 30, 2])  # the parent's map is built
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        # The child inherits this very reader, map included, and must locate the values in its own environments.
        child = ctx.Process(target=lambda: out.put(ds.read_joined([1, 30, 2])))
        child.start()
        assert out.get(timeout=20) == want
        child.join(20)
        assert child.exitcode == 0
    _make_legacy(dest)
    with open_dataset(dest) as ds:  # no checksums: read through LMDB lookups, the same bytes
        assert ds.read_joined([1, 30, 2]) == want == b"".join(x[i].tobytes() for i in [1, 30, 2])
