"""Bad inputs: each fails before anything is published, with a message that says what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nessa.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from nessa.store import ingest, ingest_arrays, load_source, open_dataset, verify


def _nothing_left(parent: Path) -> None:
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith(".")) == []


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"not found: give an existing .*mnist1d, digits, synthetic"):
        ingest(tmp_path / "nope.npz", tmp_path / "out")
    with pytest.raises(NotFoundError, match=r"not found"):
        ingest(tmp_path / "nope.npz", tmp_path / "out", format="npz")
    assert not (tmp_path / "out").exists()


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "data.tsv").write_text("1,2\n")
    with pytest.raises(InvalidArgumentError, match=r"suffix '\.tsv'; pass --format"):
        ingest(tmp_path / "data.tsv", tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match=r"unknown format 'tsv'; known formats: npz"):
        ingest(tmp_path / "data.tsv", tmp_path / "out", format="tsv")


def test_length_mismatch(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"x has 5 samples but its labels have 4; give one label per sample"):
        ingest_arrays(np.zeros((5, 2)), np.zeros(4, dtype=int), tmp_path / "out")
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 2)), y=np.zeros(2, dtype=int))
    with pytest.raises(InvalidArgumentError, match=r"3 samples but its labels have 2"):
        ingest(tmp_path / "s.npz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _nothing_left(tmp_path)


@pytest.mark.parametrize("labels", [np.array([0.5, 1.0, 2.0]), np.array(["a", "b", "c"]), np.array([0, -1, 2])])
def test_labels_not_class_ids(tmp_path: Path, labels: np.ndarray) -> None:
    with pytest.raises(InvalidArgumentError, match=r"integer class ids|must be >= 0"):
        ingest_arrays(np.zeros((3, 2)), labels, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_whole_float_labels_are_accepted(tmp_path: Path) -> None:
    (dest,) = ingest_arrays(np.zeros((3, 2)), np.array([0.0, 2.0, 1.0]), tmp_path / "out")
    assert open_dataset(dest).labels.tolist() == [0, 2, 1]


def test_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"empty"):
        ingest_arrays(np.zeros((0, 4)), np.zeros(0, dtype=int), tmp_path / "out")
    pq.write_table(pa.table({"x": pa.array([], pa.binary()), "y": pa.array([], pa.int64())}), tmp_path / "e.parquet")
    with pytest.raises(InvalidArgumentError, match=r"no rows: the dataset is empty"):
        ingest(tmp_path / "e.parquet", tmp_path / "out")


def test_more_shards_than_samples(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"5 shards for 3 samples.*use --shards 3 or fewer"):
        ingest_arrays(np.zeros((3, 2)), np.zeros(3, dtype=int), tmp_path / "out", shards=5)
    with pytest.raises(InvalidArgumentError, match=r"shards must be >= 1"):
        ingest_arrays(np.zeros((3, 2)), np.zeros(3, dtype=int), tmp_path / "out", shards=0)
    assert not (tmp_path / "out").exists()
    _nothing_left(tmp_path)


def test_unsupported_sample_dtypes(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"numeric or bool"):
        ingest_arrays(np.array([["a"], ["b"]]), [0, 1], tmp_path / "out")
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(InvalidArgumentError, match=r"without pickle"):
        ingest(tmp_path / "o.npz", tmp_path / "out")


def test_npz_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", data=np.zeros((3, 2)), y=np.zeros(3, dtype=int))
    with pytest.raises(InvalidArgumentError, match=r"has no array 'x' .*--sample-column"):
        ingest(tmp_path / "s.npz", tmp_path / "out")
    np.savez(tmp_path / "t.npz", x=np.zeros((3, 2)), y=np.zeros(3, dtype=int), x_test=np.zeros((1, 2)))
    with pytest.raises(InvalidArgumentError, match=r"only one of x_test/y_test"):
        ingest(tmp_path / "t.npz", tmp_path / "out")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidArgumentError, match=r"not a readable .npz"):
        ingest(tmp_path / "bad.npz", tmp_path / "out")


def test_parquet_bad_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"pixels": pa.array([b"a", b"b"]), "cls": [0, 1]}), tmp_path / "t.parquet")
    with pytest.raises(InvalidArgumentError, match=r"no sample column found .*--sample-column"):
        ingest(tmp_path / "t.parquet", tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match=r"no label column found .*--label-column"):
        ingest(tmp_path / "t.parquet", tmp_path / "out", sample_column="pixels")
    (dest,) = ingest(tmp_path / "t.parquet", tmp_path / "out", sample_column="pixels", label_column="cls")
    assert open_dataset(dest).read([1]) == [b"b"]
    pq.write_table(pa.table({"x": pa.array([[1, 2], [3]]), "y": [0, 1]}), tmp_path / "ragged.parquet")
    with pytest.raises(InvalidArgumentError, match=r"lists of different lengths"):
        ingest(tmp_path / "ragged.parquet", tmp_path / "out2")
    pq.write_table(pa.table({"x": pa.array([b"a", None]), "y": [0, 1]}), tmp_path / "nulls.parquet")
    with pytest.raises(InvalidArgumentError, match=r"null samples"):
        ingest(tmp_path / "nulls.parquet", tmp_path / "out2")
    pq.write_table(pa.table({"x": ["s", "t"], "y": [0, 1]}), tmp_path / "str.parquet")
    with pytest.raises(InvalidArgumentError, match=r"samples must be binary"):
        ingest(tmp_path / "str.parquet", tmp_path / "out2")


def test_imagefolder_problems(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    with pytest.raises(InvalidArgumentError, match=r"no class sub-directories"):
        ingest(root, tmp_path / "out")
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    with pytest.raises(InvalidArgumentError, match=r"class directory .*b holds no .png/.jpg/.jpeg images"):
        ingest(root, tmp_path / "out")
    (root / "b" / "2.jpg").write_bytes(b"\xff\xd8\xffxx")
    with pytest.raises(InvalidArgumentError, match=r"mixes png and jpeg images .* convert the images to one format"):
        ingest(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_options_that_do_not_apply(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 2)), y=np.zeros(3, dtype=int))
    with pytest.raises(InvalidArgumentError, match=r"apply to generated sets"):
        load_source(tmp_path / "s.npz", num_samples=2)
    with pytest.raises(InvalidArgumentError, match=r"apply to file sources only"):
        load_source("digits", sample_column="x")
    with pytest.raises(InvalidArgumentError, match=r"--num-samples must be 1..1797"):
        load_source("digits", num_samples=5000)
    with pytest.raises(InvalidArgumentError, match=r"test fraction must be in"):
        load_source("synthetic", num_samples=10, test_fraction=1.5)


def test_existing_destination_refused(small_dataset, tmp_path: Path) -> None:
    path, x, _ = small_dataset(n=10)
    with pytest.raises(FailedPreconditionError, match=r"already exists; pass --overwrite"):
        ingest_arrays(np.ones((4, 2)), [0, 1, 0, 1], path)
    assert len(open_dataset(path)) == 10
    assert open_dataset(path).read([0]) == [x[0].tobytes()]


def test_hidden_destination_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"not starting with '.'"):
        ingest_arrays(np.ones((2, 2)), [0, 1], tmp_path / ".hidden")


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match=r"has no manifest.json .*nessa ingest"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(NotFoundError):
        verify(tmp_path / "empty")


def test_unknown_manifest_version(small_dataset) -> None:
    path, _, _ = small_dataset(n=10)
    data = json.loads((path / "manifest.json").read_text())
    data["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(FailedPreconditionError, match=r"format version 99 is not supported.*re-ingest"):
        open_dataset(path)
    with pytest.raises(FailedPreconditionError, match=r"format version 99"):
        verify(path)


def test_malformed_manifest(small_dataset) -> None:
    from nessa.errors import DataCorruptionError

    path, _, _ = small_dataset(n=10)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(DataCorruptionError, match=r"manifest.json: not valid JSON.*re-ingest"):
        open_dataset(path)
    data = {"format": "nessa-dataset", "format_version": 1, "name": "x"}
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataCorruptionError, match=r"malformed manifest"):
        open_dataset(path)
