"""Image decoding with declared preprocessing (nessa.store.images) and ingest's dtype cast (--dtype)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nessa.errors import DataCorruptionError, InvalidArgumentError
from nessa.store import ingest, open_dataset
from nessa.store.images import ImagePrep, decode_image, decode_images


def _png(arr: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_keeps_pixels_exactly_and_lays_them_out_hwc() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = decode_image(_png(arr))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, arr)
    gray = decode_image(_png(arr), ImagePrep(mode="L"))
    assert gray.shape == (5, 7, 1)


def test_resize_then_center_crop() -> None:
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, 10:20] = 255  # a bright vertical band in the middle third
    out = decode_image(_png(arr), ImagePrep(resize=10, height=10, width=10))
    assert out.shape == (10, 10, 3)  # 20x30 -> 10x15 -> centre 10x10
    assert out[:, 5].min() > 200 and out[:, 0].max() < 60
    with pytest.raises(InvalidArgumentError, match="cannot center-crop 12x12"):
        decode_image(_png(arr), ImagePrep(resize=10, height=12, width=12))


def test_batches_of_different_sizes_need_a_crop() -> None:
    a, b = np.zeros((4, 4, 3), np.uint8), np.zeros((6, 5, 3), np.uint8)
    with pytest.raises(InvalidArgumentError, match="different sizes"):
        decode_images([_png(a), _png(b)])
    assert decode_images([_png(a), _png(b)], ImagePrep(resize=4, height=4, width=4)).shape == (2, 4, 4, 3)


def test_bad_bytes_and_bad_prep() -> None:
    with pytest.raises(DataCorruptionError, match="does not decode"):
        decode_image(b"not an image")
    with pytest.raises(InvalidArgumentError, match="RGB"):
        ImagePrep(mode="CMYK")
    with pytest.raises(InvalidArgumentError, match="together"):
        ImagePrep(height=4)


def _float64_parquet(path: Path) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(12, 4))
    pq.write_table(pa.table({"x": pa.array(list(x)), "y": np.arange(12) % 3}), path)
    return x


def test_ingest_casts_parquet_float64_to_float32_and_records_it(tmp_path: Path) -> None:
    x = _float64_parquet(tmp_path / "t.parquet")
    (path,) = ingest(tmp_path / "t.parquet", tmp_path / "d", dtype="float32")
    ds = open_dataset(path)
    assert ds.dtype == np.float32 and ds.sample_shape == (4,)
    np.testing.assert_array_equal(ds.read_arrays(np.arange(12)), x.astype(np.float32))
    assert ds.manifest.source["cast"] == "float64 -> float32"
    ds.close()
    with pytest.raises(InvalidArgumentError, match="non-integers"):
        ingest(tmp_path / "t.parquet", tmp_path / "u", dtype="uint8")
    assert not (tmp_path / "u").exists()  # atomic: nothing left behind


def test_cli_ingest_dtype_flag(tmp_path: Path) -> None:
    _float64_parquet(tmp_path / "t.parquet")
    run = subprocess.run(
        [sys.executable, "-m", "nessa.cli", "ingest", str(tmp_path / "t.parquet"), str(tmp_path / "d"), "--dtype",
         "float32"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "raw float32 (4,)" in run.stdout
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["source"]["cast"] == "float64 -> float32"


def test_jpeg_folder_ingests_and_decodes(tmp_path: Path) -> None:
    for c, name in enumerate(("a", "b")):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((9, 12, 3), 60 + 120 * c, np.uint8), "RGB").save(
                tmp_path / "src" / name / f"{i}.jpg"
            )
    (path,) = ingest(tmp_path / "src", tmp_path / "d")
    ds = open_dataset(path)
    assert ds.codec.kind == "jpeg"
    x = decode_images(ds.read(np.arange(6)), ImagePrep(resize=8, height=8, width=8))
    assert x.shape == (6, 8, 8, 3)
    assert abs(float(x[0].mean()) - 60) < 5 and abs(float(x[5].mean()) - 180) < 5  # lossy, close
    ds.close()
