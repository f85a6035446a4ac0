"""Hugging Face ``save_to_disk`` directories, WebDataset tar shards and CSV files ingest, on fixtures made here."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nessa.errors import InvalidArgumentError
from nessa.store import ingest, open_dataset
from nessa.store.images import decode_image


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 5, 3), value, np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def test_hf_datasetdict_with_images_and_class_labels(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    train = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png(i), "path": None} for i in range(6)], "label": [0, 1, 0, 1, 1, 0]}, features=features
    )
    test = datasets.Dataset.from_dict({"image": [{"bytes": _png(9), "path": None}], "label": [1]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
    paths = ingest(tmp_path / "hf", tmp_path / "d")
    assert [p.name for p in paths] == ["d", "d-test"]
    ds = open_dataset(paths[0])
    assert ds.codec.kind == "png" and len(ds) == 6 and ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 1, 0, 1, 1, 0]
    assert decode_image(ds.read([3])[0])[0, 0].tolist() == [3, 3, 3]
    assert ds.manifest.source["kind"] == "hfdisk"
    ds.close()
    assert len(open_dataset(paths[1])) == 1


def test_hf_dataset_of_float_lists(tmp_path: Path) -> None:
    import datasets

    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    datasets.Dataset.from_dict({"x": x.tolist(), "y": [0, 1, 2, 0, 1]}).save_to_disk(str(tmp_path / "hf"))
    (path,) = ingest(tmp_path / "hf", tmp_path / "d", dtype="float32")
    ds = open_dataset(path)
    np.testing.assert_allclose(ds.read_arrays(np.arange(5)), x)
    ds.close()


def _write_shard(path: Path, start: int, n: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            for ext, data in (("png", _png(i)), ("cls", str(i % 3).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_in_order(tmp_path: Path) -> None:
    (tmp_path / "wds").mkdir()
    _write_shard(tmp_path / "wds" / "shard-000001.tar", 4, 3)
    _write_shard(tmp_path / "wds" / "shard-000000.tar", 0, 4)
    (path,) = ingest(tmp_path / "wds", tmp_path / "d")
    ds = open_dataset(path)
    assert ds.codec.kind == "png" and len(ds) == 7 and ds.labels.tolist() == [i % 3 for i in range(7)]
    assert [decode_image(v)[0, 0, 0] for v in ds.read(np.arange(7))] == list(range(7))
    ds.close()


def test_webdataset_written_by_the_webdataset_package(tmp_path: Path) -> None:
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"k{i}", "png": _png(i), "cls": i % 2})
    (path,) = ingest(tmp_path / "s.tar", tmp_path / "d")
    assert open_dataset(path).labels.tolist() == [0, 1, 0]


def test_webdataset_sample_without_label_is_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        info = tarfile.TarInfo("a.png")
        data = _png(0)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidArgumentError, match="needs one png/jpg image and a label"):
        ingest(tmp_path / "bad.tar", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_csv_numeric_columns_and_named_classes(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,species,id\n1.5,2,setosa,7\n3,4.25,virginica,8\n0,1,setosa,9\n")
    (path,) = ingest(tmp_path / "t.csv", tmp_path / "d", label_column="species", columns=("id",))
    ds = open_dataset(path)
    assert ds.dtype == np.float32 and ds.sample_shape == (2,)
    np.testing.assert_array_equal(ds.read_arrays([0, 1, 2]), [[1.5, 2], [3, 4.25], [0, 1]])
    assert ds.class_names == ["setosa", "virginica"] and ds.labels.tolist() == [0, 1, 0]
    assert ds.column("id").tolist() == [7, 8, 9]
    ds.close()
    (tmp_path / "e.csv").write_text("a,y\n1,0\n,1\n")
    with pytest.raises(InvalidArgumentError, match="empty values"):
        ingest(tmp_path / "e.csv", tmp_path / "e")
