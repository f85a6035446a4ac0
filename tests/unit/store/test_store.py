"""Round trips of every source format through the store, and the reader's API."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from nessa.errors import FailedPreconditionError, InvalidArgumentError, OutOfRangeError
from nessa.store import (
    FORMAT_VERSION,
    Codec,
    ingest,
    ingest_encoded,
    ingest_splits,
    open_dataset,
    synthetic_arrays,
    verify,
)
from nessa.store.manifest import decode_key, encode_key, encode_keys, shard_counts
from nessa.store.writer import array_split


def _assert_raw_roundtrip(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with open_dataset(path) as ds:
        assert len(ds) == len(x)
        assert ds.dtype == x.dtype
        assert ds.sample_shape == x.shape[1:]
        np.testing.assert_array_equal(ds.labels, y)
        assert ds.labels.dtype == np.int64
        idx = np.arange(len(x))
        values = ds.read(idx)
        for i in range(len(x)):
            assert values[i] == np.ascontiguousarray(x[i]).tobytes()
        back = ds.read_arrays(idx)
        assert back.dtype == x.dtype
        np.testing.assert_array_equal(back, x)
        assert ds.nbytes(idx) == x.nbytes
    assert verify(path).ok


def _png(width: int, height: int, seed: int) -> bytes:
    """A valid greyscale PNG (signature, IHDR, IDAT, IEND) with seeded pixels."""
    rng = np.random.default_rng(seed)
    rows = b"".join(b"\x00" + rng.integers(0, 256, width, dtype=np.uint8).tobytes() for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _jpeg(seed: int) -> bytes:
    """Opaque bytes with JPEG's start-of-image signature (the store never decodes them)."""
    return b"\xff\xd8\xff\xe0" + np.random.default_rng(seed).integers(0, 256, 50 + seed, dtype=np.uint8).tobytes()


# -- format pieces ----------------------------------------------------------------------------------------------


def test_keys_are_big_endian_and_sort_numerically() -> None:
    assert encode_key(1) == b"\x00" * 7 + b"\x01"
    assert decode_key(encode_key(2**40 + 5)) == 2**40 + 5
    keys = encode_keys(np.array([10, 2, 300]))
    assert sorted(keys) == [encode_key(2), encode_key(10), encode_key(300)]


def test_shard_counts_are_contiguous_and_balanced() -> None:
    assert shard_counts(10, 3) == [4, 3, 3]
    assert shard_counts(5, 5) == [1] * 5


def test_layout_and_manifest(small_dataset) -> None:
    path, x, _y = small_dataset(n=101, shards=3)
    assert sorted(os.listdir(path)) == ["checksums.npy", "labels.npy", "manifest.json", "shards", "sizes.npy"]
    assert sorted(os.listdir(path / "shards")) == ["00000", "00001", "00002"]
    assert os.listdir(path / "shards" / "00000") == ["data.mdb"]
    data = json.loads((path / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert data["num_samples"] == 101
    assert data["codec"] == {"kind": "raw", "dtype": "|u1", "shape": [3, 4, 4]}
    assert data["class_names"] == ["c0", "c1", "c2", "c3", "c4"]
    assert [(s["path"], s["first_index"], s["count"]) for s in data["shards"]] == [
        ("shards/00000", 0, 34),
        ("shards/00001", 34, 34),
        ("shards/00002", 68, 33),
    ]
    assert sum(s["bytes"] for s in data["shards"]) == x.nbytes
    assert all(len(s["sha256"]) == 64 for s in data["shards"])
    assert set(data["files"]) == {"checksums.npy", "labels.npy", "sizes.npy"}
    assert data["sample_checksum"] == "xxh3_64"


def test_shard_keys_are_global_indices(small_dataset) -> None:
    import lmdb

    path, x, _ = small_dataset(n=30, shards=3)
    env = lmdb.open(str(path / "shards" / "00001"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            items = list(txn.cursor())
    finally:
        env.close()
    assert [decode_key(k) for k, _ in items] == list(range(10, 20))
    assert [v for _, v in items] == [x[i].tobytes() for i in range(10, 20)]


# -- npz ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("uint8", (3, 4, 4)), ("float32", (7,)), ("int16", ()), ("bool", (2, 3)), (">f8", (5,)), ("complex64", (2,))],
)
def test_npz_roundtrip(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    n = 57
    x = (rng.normal(size=(n, *shape)) * 50).astype(dtype)
    y = rng.integers(0, 4, size=n).astype(np.int32)
    src = tmp_path / "src.npz"
    np.savez(src, x=x, y=y)
    (dest,) = ingest(src, tmp_path / "out", shards=3)
    _assert_raw_roundtrip(dest, x, y)


def test_npz_with_test_split_writes_two_datasets(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 255, (40, 6), dtype=np.uint8), rng.integers(0, 3, 40)
    xt, yt = rng.integers(0, 255, (9, 6), dtype=np.uint8), np.array([0, 1, 2, 3, 0, 1, 2, 3, 0])
    src = tmp_path / "src.npz"
    np.savez(src, x=x, y=y, x_test=xt, y_test=yt, class_names=np.array(["a", "b", "c", "d"]))
    paths = ingest(src, tmp_path / "out")
    assert paths == [tmp_path / "out", tmp_path / "out-test"]
    _assert_raw_roundtrip(paths[0], x, y)
    _assert_raw_roundtrip(paths[1], xt, yt)
    for p in paths:
        assert open_dataset(p).class_names == ["a", "b", "c", "d"]
    assert open_dataset(paths[1]).manifest.ingest_id == open_dataset(paths[0]).manifest.ingest_id


def test_npz_named_arrays_shape_and_columns(tmp_path: Path) -> None:
    x = np.arange(24 * 12, dtype=np.float32).reshape(24, 12)
    labels = np.arange(24) % 3
    weight = np.linspace(0, 1, 24)
    src = tmp_path / "src.npz"
    np.savez(src, images=x, target=labels, weight=weight)
    (dest,) = ingest(
        src,
        tmp_path / "out",
        sample_column="images",
        label_column="target",
        sample_shape=(3, 2, 2),
        columns=["weight"],
    )
    ds = open_dataset(dest)
    assert ds.sample_shape == (3, 2, 2)
    np.testing.assert_array_equal(ds.read_arrays([5]).reshape(12), x[5])
    np.testing.assert_array_equal(ds.column("weight"), weight)
    assert verify(dest).ok


# -- parquet / arrow ---------------------------------------------------------------------------------------------


def test_parquet_binary_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    blobs = [rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes() for _ in range(50)]
    labels = rng.integers(0, 5, 50)
    names = [f"n{i}" for i in range(50)]
    pq.write_table(pa.table({"data": pa.array(blobs, pa.binary()), "label": labels, "name": names}), tmp_path / "t.pq")
    (dest,) = ingest(tmp_path / "t.pq", tmp_path / "out", shards=4, columns=["name"])
    ds = open_dataset(dest)
    assert str(ds.codec) == "bytes"
    assert ds.sample_shape is None
    assert ds.read(np.arange(50)) == blobs
    assert ds.nbytes(range(50)) == sum(map(len, blobs))
    assert list(ds.column("name")) == names
    np.testing.assert_array_equal(ds.labels, labels)
    assert verify(dest).ok


def test_parquet_png_struct_column_is_png(tmp_path: Path) -> None:
    pngs = [_png(3, 2, s) for s in range(12)]
    image = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(pngs)])
    pq.write_table(pa.table({"image": image, "label": [i % 2 for i in range(12)]}), tmp_path / "hf.parquet")
    (dest,) = ingest(tmp_path / "hf.parquet", tmp_path / "out")
    ds = open_dataset(dest)
    assert str(ds.codec) == "png"
    assert ds.read(range(12)) == pngs


@pytest.mark.parametrize("kind", ["fixed_size_list", "list", "nested"])
def test_parquet_numeric_lists_roundtrip(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(4)
    n = 33
    if kind == "fixed_size_list":
        x = rng.normal(size=(n, 12)).astype(np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 12)
    elif kind == "list":
        x = rng.integers(-1000, 1000, size=(n, 5)).astype(np.int64)
        col = pa.array(x.tolist(), pa.list_(pa.int64()))
    else:
        x = rng.integers(0, 255, size=(n, 2, 3)).astype(np.uint8)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3)
        col = pa.FixedSizeListArray.from_arrays(inner, 2)
    y = rng.integers(0, 3, n)
    pq.write_table(pa.table({"x": col, "y": y}), tmp_path / "t.parquet")
    (dest,) = ingest(tmp_path / "t.parquet", tmp_path / "out", shards=2)
    _assert_raw_roundtrip(dest, x, y)


def test_arrow_ipc_file_roundtrip(tmp_path: Path) -> None:
    x = np.arange(20 * 4, dtype=np.float64).reshape(20, 4)
    y = np.arange(20) % 4
    feather.write_feather(
        pa.table({"sample": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4), "target": y}),
        tmp_path / "t.arrow",
    )
    (dest,) = ingest(tmp_path / "t.arrow", tmp_path / "out")
    _assert_raw_roundtrip(dest, x, y)


# -- image folder ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg", ".JPEG"])
def test_imagefolder_roundtrip(tmp_path: Path, ext: str) -> None:
    root = tmp_path / "imgs"
    expected: list[tuple[str, bytes, int]] = []
    for label, cls in enumerate(["bird", "cat", "dog"]):
        (root / cls / "sub").mkdir(parents=True)
        for i in range(4):
            blob = _png(4, 3, 10 * label + i) if ext == ".png" else _jpeg(10 * label + i)
            rel = f"{cls}/sub/{i}{ext}" if i == 3 else f"{cls}/{i}{ext}"
            (root / rel).write_bytes(blob)
            expected.append((rel, blob, label))
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / "cat" / ".hidden.png").write_bytes(b"ignored")
    (dest,) = ingest(root, tmp_path / "out", shards=2)
    ds = open_dataset(dest)
    assert str(ds.codec) == ("png" if ext == ".png" else "jpeg")
    assert ds.class_names == ["bird", "cat", "dog"]
    expected.sort(key=lambda t: (t[2], t[0]))
    rel = list(ds.column("relpath"))
    assert rel == [t[0] for t in expected]
    assert ds.read(range(len(ds))) == [t[1] for t in expected]
    np.testing.assert_array_equal(ds.labels, [t[2] for t in expected])
    assert ds.manifest.source["ignored_files"] == 1
    with pytest.raises(FailedPreconditionError, match=r"image library"):
        ds.decode(ds.read([0])[0])
    with pytest.raises(FailedPreconditionError, match=r"does not decode"):
        ds.read_arrays([0])
    assert verify(dest).ok


def test_ingest_encoded_api(tmp_path: Path) -> None:
    blobs = [_png(2, 2, s) for s in range(6)]
    (dest,) = ingest_encoded(blobs, [0, 1, 0, 1, 0, 1], tmp_path / "enc", codec="png", class_names=["a", "b"])
    assert open_dataset(dest).read([5, 0]) == [blobs[5], blobs[0]]


# -- generated sets ----------------------------------------------------------------------------------------------


def test_mnist1d_roundtrip_and_rng_untouched(tmp_path: Path) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(1234)  # noqa: NPY002 (the legacy global state is what is tested)
    random.seed(99)
    before = (np.random.random(), random.random())  # noqa: NPY002
    np.random.seed(1234)  # noqa: NPY002 (the legacy global state is what is tested)
    random.seed(99)
    paths = ingest("mnist1d", tmp_path / "m", num_samples=200, seed=7)
    assert (np.random.random(), random.random()) == before  # noqa: NPY002 (the package's reseeding did not leak)
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = 200, 7, 0.8
    data = make_dataset(args)
    _assert_raw_roundtrip(paths[0], data["x"].astype(np.float32), data["y"])
    _assert_raw_roundtrip(paths[1], data["x_test"].astype(np.float32), data["y_test"])
    assert (len(open_dataset(paths[0])), len(open_dataset(paths[1]))) == (160, 40)


def test_digits_roundtrip(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    train, test = ingest("digits", tmp_path / "d", seed=3)
    a, b = open_dataset(train), open_dataset(test)
    assert (len(a), len(b)) == (1438, 359)
    assert a.sample_shape == (1, 8, 8) and a.dtype == np.uint8
    digits = load_digits()
    want = sorted(zip((im.astype(np.uint8).tobytes() for im in digits.images), digits.target.tolist(), strict=True))
    got = sorted(zip(a.read(range(len(a))) + b.read(range(len(b))), a.labels.tolist() + b.labels.tolist(), strict=True))
    assert got == want


def test_synthetic_roundtrip_and_class_structure(tmp_path: Path) -> None:
    train, test = ingest("synthetic", tmp_path / "s", num_samples=600, seed=5, shards=3)
    x, y = synthetic_arrays(500, seed=5, split=0)
    _assert_raw_roundtrip(train, x, y)
    xt, yt = synthetic_arrays(100, seed=5, split=1)
    _assert_raw_roundtrip(test, xt, yt)
    assert x.shape[1:] == (3, 32, 32)
    means = np.stack([x[y == c].reshape(-1, 3072).mean(0) for c in range(10)])
    dist = ((xt.reshape(-1, 1, 3072).astype(np.float32) - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == yt).mean() > 0.9  # classes are separable: useful for training tests


def test_synthetic_without_test_split(tmp_path: Path) -> None:
    assert ingest("synthetic", tmp_path / "s", num_samples=50, test_fraction=0) == [tmp_path / "s"]
    assert not (tmp_path / "s-test").exists()


# -- writer ------------------------------------------------------------------------------------------------------


def test_map_full_grows(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 255, (300, 5000), dtype=np.uint8)  # ~1.5 MB into a 64 KiB initial map
    y = np.zeros(300, dtype=np.int64)
    (dest,) = ingest_splits([array_split(x, y)], tmp_path / "big", map_size=1 << 16)
    _assert_raw_roundtrip(dest, x, y)


def test_codec_validation() -> None:
    assert Codec.raw("float32", (3,)).sample_nbytes == 12
    with pytest.raises(InvalidArgumentError, match=r"unknown codec"):
        Codec("webp")
    with pytest.raises(InvalidArgumentError, match=r"numeric or bool"):
        Codec.raw("U3", (1,))


# -- reader ------------------------------------------------------------------------------------------------------


def test_read_order_duplicates_and_empty(small_dataset) -> None:
    path, x, _ = small_dataset(n=100, shards=4)
    ds = open_dataset(path)
    idx = [99, 0, 50, 50, 24, 25, 99, 1]
    assert ds.read(idx) == [x[i].tobytes() for i in idx]
    assert ds.read(np.array(idx, dtype=np.uint32)) == [x[i].tobytes() for i in idx]
    assert ds.read(7) == [x[7].tobytes()]
    assert ds.read([]) == []
    assert ds.read_arrays([]).shape == (0, 3, 4, 4)
    np.testing.assert_array_equal(ds.decode(ds.read([3])[0]), x[3])
    assert ds.nbytes(idx) == len(idx) * 48
    np.testing.assert_array_equal(ds.shard_of([0, 24, 25, 99]), [0, 0, 1, 3])


def test_read_out_of_range_and_bad_indices(small_dataset) -> None:
    path, _, _ = small_dataset(n=20)
    ds = open_dataset(path)
    with pytest.raises(OutOfRangeError, match=r"index 20 is out of range .*valid: 0..19"):
        ds.read([0, 20])
    with pytest.raises(OutOfRangeError, match=r"index -1"):
        ds.read([-1])
    with pytest.raises(OutOfRangeError):
        ds.nbytes([25])
    with pytest.raises(InvalidArgumentError, match=r"integers"):
        ds.read([0.5])
    with pytest.raises(InvalidArgumentError, match=r"1-D"):
        ds.read([[1, 2]])


def test_readers_share_environments_and_pickle(small_dataset) -> None:
    path, x, _ = small_dataset(n=40)
    a = open_dataset(path)
    b = open_dataset(path)  # LMDB forbids a second open of one environment per process: shared
    assert a.read([1]) == b.read([1]) == [x[1].tobytes()]
    c = pickle.loads(pickle.dumps(a))
    assert c.read([39]) == [x[39].tobytes()]
    a.close()
    assert b.read([2]) == [x[2].tobytes()]  # still open for b
    with pytest.raises(FailedPreconditionError, match=r"closed"):
        a.read([0])
    b.close()
    c.close()


def test_threads_read_concurrently(small_dataset) -> None:
    path, x, _ = small_dataset(n=300, shards=3)
    ds = open_dataset(path)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                idx = rng.integers(0, 300, 32)
                np.testing.assert_array_equal(ds.read_arrays(idx), x[idx])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_reader_reopens_after_fork(small_dataset) -> None:
    path, x, _ = small_dataset(n=60, shards=2)
    ds = open_dataset(path)
    assert ds.read([0, 59]) == [x[0].tobytes(), x[59].tobytes()]  # parent opened both shards
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not use the parent's environments; reopens its own
        try:
            ok = ds.read([5, 40]) == [x[5].tobytes(), x[40].tobytes()]
            ok = ok and open_dataset(path).read([6]) == [x[6].tobytes()]
            os.write(w, b"1" if ok else b"0")
        except BaseException as exc:
            os.write(w, repr(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 256)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert ds.read([1]) == [x[1].tobytes()]  # the parent's environments still work
