"""Where samples come from: files (``.npz``, Parquet/Arrow, an image-folder tree) and generated sets.

Each loader returns the :class:`~nessa.store.writer.Split` list to write; :func:`ingest` (the Python form of
``nessa ingest``) resolves a source and writes it atomically. A source with a test split becomes two datasets,
``DEST`` and ``DEST-test``, published together or not at all.

File sources:

- ``npz``: arrays ``x`` (n, ...) numeric/bool and ``y`` (n,) integer (other names with ``sample_column`` /
  ``label_column``); optional ``x_test``/``y_test`` (the same names + ``_test``) become ``DEST-test``; an optional
  ``class_names`` array of strings. Loaded with ``allow_pickle=False``: object arrays are refused.
- ``parquet`` (``.parquet``, ``.pq``) and ``arrow`` (``.arrow``, ``.feather``, ``.ipc``): a sample column and an
  integer label column (defaults: the first of ``x, sample, image, img, data, bytes`` and of ``y, label, labels,
  target`` present). A binary column (or a struct with a ``bytes`` field, as Hugging Face image columns are) is
  stored as its bytes, exactly: codec ``png`` or ``jpeg`` when every value starts with that format's signature,
  else opaque ``bytes``. A fixed-size-list or list column of numbers (nested lists for more dimensions; list
  lengths must agree) is stored raw with the value type's dtype and the list sizes as the per-sample shape. Nulls
  are refused. Extra columns (``columns``) of numbers, bools or strings are kept as per-sample columns.
- ``imagefolder``: ``root/<class>/**/<file>.png|.jpg|.jpeg`` (case-insensitive), class names = the sorted
  sub-directory names, samples ordered by class then path, stored as the files' bytes (never decoded or checked),
  with a ``relpath`` column. Hidden files and directories are skipped, other files ignored (their number is
  recorded in the manifest's ``source``). Mixing png and jpeg files is refused (one codec per dataset): convert
  them to one format first.

More file sources:

- ``hfdisk``: a directory written by ``Dataset.save_to_disk`` (``state.json``) or ``DatasetDict.save_to_disk``
  (``dataset_dict.json``; its ``train`` split becomes ``DEST`` and its ``test`` (else ``validation``) split
  ``DEST-test``), read with ``datasets.load_from_disk`` (local files only, no hub access). Its Arrow table goes
  through the Parquet/Arrow rules (image columns' ``bytes`` stored as png/jpeg; lists of numbers as raw arrays); a
  ``ClassLabel`` label column gives the class names.
- ``webdataset``: one ``.tar`` or a directory of ``.tar`` shards (sorted by name). The members that share a key
  (the name up to its first dot) form one sample. The image is the ``png``/``jpg``/``jpeg`` member, and the label
  comes from the ``cls``/``label``/``target``/``txt`` member (an integer as text). Members are read with
  :mod:`tarfile` in stream order, so the ``webdataset`` package is not needed.
- ``csv``: a header row. The label column (``--label-column``, default ``y``/``label``/``labels``/``target``) holds
  integers or class names (sorted to ids); every other column given by ``--column`` is kept per sample; the
  remaining numeric columns form the sample vector, stored as float32.

Generated sets (no downloads; ``num_samples`` is the total over both splits, ``test_fraction`` of them go to
``DEST-test``; ``test_fraction=0`` writes ``DEST`` only):

- ``mnist1d``: the ``mnist1d`` package's generator (``get_dataset_args``/``make_dataset`` with the given
  ``num_samples`` and ``seed``; default 5,000, rounded down to a multiple of 10 by the package, test fraction 0.2
  as the package splits), stored as float32 (40,) sequences. Python's and numpy's global random state, which the
  package reseeds, are restored afterwards.
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 samples; ``num_samples`` takes a seeded subset), stored as
  uint8 (1, 8, 8) images (pixel values 0..16, exact), split by a seeded permutation (test fraction 0.2).
- ``synthetic``: CIFAR-shaped uint8 (3, 32, 32) images in 10 classes, for throughput tests: each class has a
  blocky mean pattern, each sample is ``0.6 * pattern + 0.4 * uniform noise``; default 60,000 with test fraction
  1/6 (50,000 + 10,000, as CIFAR-10). Generated in chunks from seeds derived from ``(seed, split, chunk)``, so
  memory stays bounded and the result does not depend on the chunking.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nessa.errors import InvalidArgumentError, NotFoundError
from nessa.store.manifest import Codec
from nessa.store.writer import (
    TEST_SUFFIX,
    Buffer,
    Split,
    array_split,
    check_class_names,
    check_labels,
    encoded_split,
    ingest_splits,
)

__all__ = [
    "FILE_FORMATS",
    "FORMATS",
    "GENERATED",
    "IMAGE_EXTENSIONS",
    "digits_splits",
    "imagefolder_splits",
    "infer_format",
    "ingest",
    "load_source",
    "mnist1d_splits",
    "npz_splits",
    "synthetic_arrays",
    "synthetic_splits",
    "table_splits",
]

GENERATED = ("mnist1d", "digits", "synthetic")
FILE_FORMATS = ("npz", "parquet", "arrow", "imagefolder", "hfdisk", "webdataset", "csv")
FORMATS = FILE_FORMATS + GENERATED
IMAGE_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
_SUFFIX_FORMATS = {".npz": "npz", ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow"}
_SUFFIX_FORMATS.update({".ipc": "arrow", ".tar": "webdataset", ".csv": "csv"})
_SAMPLE_COLUMNS = ("x", "sample", "image", "img", "data", "bytes")
_LABEL_COLUMNS = ("y", "label", "labels", "target")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_SYNTH_SHAPE = (3, 32, 32)
_SYNTH_CLASSES = 10
_SYNTH_CHUNK = 1024
_DEFAULTS = {"mnist1d": (5000, 0.2), "digits": (1797, 0.2), "synthetic": (60000, 1 / 6)}


def infer_format(source: str | Path) -> str:
    """The format of ``source``: a generated set's name, or a path's format from its suffix (or a directory).

    Raises:
        NotFoundError: ``source`` is neither an existing path nor a generated set's name.
        InvalidArgumentError: the suffix names no known format.
    """
    path = Path(source)
    if path.is_dir():
        if is_hfdisk(path):
            return "hfdisk"
        if any(p.suffix == ".tar" for p in path.iterdir()) and not any(p.is_dir() for p in path.iterdir()):
            return "webdataset"
        return "imagefolder"
    if path.is_file():
        fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InvalidArgumentError(
                f"cannot tell the format of {path} from its suffix {path.suffix!r}; pass --format "
                f"({', '.join(FILE_FORMATS)})"
            )
        return fmt
    if str(source) in GENERATED:
        return str(source)
    raise NotFoundError(
        f"source {str(source)!r} not found: give an existing .npz/.parquet/.arrow file or image-folder directory, "
        f"or a generated set ({', '.join(GENERATED)})"
    )


# -- npz ---------------------------------------------------------------------------------------------------------


def npz_splits(
    path: Path | str,
    *,
    sample_column: str | None = None,
    label_column: str | None = None,
    sample_shape: Sequence[int] | None = None,
    columns: Sequence[str] = (),
) -> list[Split]:
    """Splits from a ``.npz`` file (see the module docstring)."""
    path = Path(path)
    xk, yk = sample_column or "x", label_column or "y"
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NotFoundError(f"source {path} not found") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidArgumentError(f"{path} is not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidArgumentError(f"{path} holds a single array, not an .npz archive of named arrays ({xk}, {yk})")
    with archive as z:
        keys = list(z.files)

        def get(key: str) -> np.ndarray:
            try:
                return z[key]
            except ValueError as exc:  # object arrays with allow_pickle=False
                raise InvalidArgumentError(
                    f"{path}: array {key!r} cannot be loaded without pickle ({exc}); store plain numeric arrays"
                ) from exc

        for key in (xk, yk):
            if key not in keys:
                raise InvalidArgumentError(
                    f"{path} has no array {key!r} (it has {keys}); name the samples/labels arrays with "
                    "--sample-column/--label-column"
                )
        names = None
        if "class_names" in keys:
            cn = get("class_names")
            if cn.dtype.kind not in "US" or cn.ndim != 1:
                raise InvalidArgumentError(f"{path}: class_names must be a 1-D array of strings")
            names = [str(c) for c in cn]
        extra = {}
        for col in columns:
            if col not in keys:
                raise InvalidArgumentError(f"{path} has no array {col!r} to keep as a column (it has {keys})")
            extra[col] = get(col)
        y = check_labels(get(yk), f"{path}:{yk}")
        y_test = None
        has_test = [k in keys for k in (xk + "_test", yk + "_test")]
        if any(has_test) and not all(has_test):
            raise InvalidArgumentError(f"{path} has only one of {xk}_test/{yk}_test; give both or neither")
        if all(has_test):
            y_test = check_labels(get(yk + "_test"), f"{path}:{yk}_test")
            if names is None:
                top = max(int(y.max(initial=-1)), int(y_test.max(initial=-1))) + 1
                names = [str(i) for i in range(max(top, 1))]
        source = {"kind": "npz", "path": str(path.absolute())}
        splits = [
            array_split(get(xk), y, class_names=names, columns=extra, source=source, sample_shape=sample_shape, what=xk)
        ]
        if y_test is not None:
            splits.append(
                array_split(
                    get(xk + "_test"),
                    y_test,
                    class_names=names,
                    source={**source, "split": "test"},
                    suffix=TEST_SUFFIX,
                    sample_shape=sample_shape,
                    what=xk + "_test",
                )
            )
    return splits


# -- parquet / arrow ---------------------------------------------------------------------------------------------


def _sniff(values: Sequence[bytes]) -> str:
    png = sum(1 for v in values if v.startswith(_PNG_MAGIC))
    jpeg = sum(1 for v in values if v.startswith(_JPEG_MAGIC))
    if png == len(values):
        return "png"
    if jpeg == len(values):
        return "jpeg"
    if png and jpeg and png + jpeg == len(values):
        raise InvalidArgumentError(
            f"the sample column mixes png ({png}) and jpeg ({jpeg}) images; a dataset has one codec: convert them "
            "to one format first"
        )
    return "bytes"


def _pick(names: Sequence[str], given: str | None, defaults: Sequence[str], what: str, path: Path) -> str:
    if given is not None:
        if given not in names:
            raise InvalidArgumentError(f"{path} has no column {given!r} (columns: {list(names)})")
        return given
    for name in defaults:
        if name in names:
            return name
    raise InvalidArgumentError(
        f"{path}: no {what} column found among {list(names)} (looked for {list(defaults)}); name it with "
        f"--{what}-column"
    )


def _read_table(path: Path, fmt: str) -> Any:
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path) if fmt == "parquet" else feather.read_table(path)
    except FileNotFoundError:
        raise NotFoundError(f"source {path} not found") from None
    except (pa.ArrowException, OSError) as exc:
        raise InvalidArgumentError(f"{path} is not a readable {fmt} file ({exc})") from exc


def _table_samples(col: Any, name: str, path: Path) -> tuple[str, list[bytes] | None, np.ndarray | None]:
    """(codec kind, encoded values or None, raw array or None) of a sample column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise InvalidArgumentError(f"{path}: column {name!r} has {arr.null_count} null samples; drop or fill them")
    t = arr.type
    if pa.types.is_struct(t):
        if t.get_field_index("bytes") < 0:
            raise InvalidArgumentError(f"{path}: struct column {name!r} has no 'bytes' field to store")
        arr = pc.struct_field(arr, "bytes")
        t = arr.type
        if arr.null_count:
            raise InvalidArgumentError(f"{path}: column {name!r}.bytes has {arr.null_count} nulls; drop or fill them")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        values = arr.to_pylist()
        return _sniff(values), values, None
    n = len(arr)
    shape: list[int] = []
    while pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        if pa.types.is_fixed_size_list(t):
            size = t.list_size
        else:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if len(lengths) and not np.all(lengths == lengths[0]):
                raise InvalidArgumentError(
                    f"{path}: column {name!r} holds lists of different lengths ({int(lengths.min())}.."
                    f"{int(lengths.max())}); raw samples need one shape"
                )
            size = int(lengths[0]) if len(lengths) else 0
        shape.append(int(size))
        arr = arr.flatten()
        t = arr.type
        if arr.null_count:
            raise InvalidArgumentError(f"{path}: column {name!r} has {arr.null_count} null values inside its lists")
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise InvalidArgumentError(
            f"{path}: column {name!r} has type {col.type}; samples must be binary (encoded bytes) or (lists of) numbers"
        )
    values_np = arr.to_numpy(zero_copy_only=False)
    return "raw", None, values_np.reshape(n, *shape)


def _table_column(col: Any, name: str, path: Path) -> np.ndarray:
    import pyarrow as pa

    if col.null_count:
        raise InvalidArgumentError(f"{path}: column {name!r} has {col.null_count} nulls; drop or fill them")
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.array(col.to_pylist(), dtype=str)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return np.asarray(col.to_numpy())
    raise InvalidArgumentError(f"{path}: column {name!r} has type {t}; extra columns must be numbers, bools or strings")


def table_splits(
    path: Path | str,
    *,
    fmt: str = "parquet",
    sample_column: str | None = None,
    label_column: str | None = None,
    sample_shape: Sequence[int] | None = None,
    columns: Sequence[str] = (),
) -> list[Split]:
    """Splits from a Parquet or Arrow IPC file (see the module docstring)."""
    path = Path(path)
    return table_to_splits(
        _read_table(path, fmt),
        path,
        {"kind": fmt, "path": str(path.absolute())},
        sample_column=sample_column,
        label_column=label_column,
        sample_shape=sample_shape,
        columns=columns,
    )


def table_to_splits(
    table: Any,
    path: Path,
    source: dict[str, Any],
    *,
    sample_column: str | None = None,
    label_column: str | None = None,
    sample_shape: Sequence[int] | None = None,
    columns: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
    suffix: str = "",
) -> list[Split]:
    """The split of a pyarrow table (a sample and a label column, see the module docstring); ``path`` names it."""
    names = table.column_names
    xname = _pick(names, sample_column, _SAMPLE_COLUMNS, "sample", path)
    yname = _pick(names, label_column, _LABEL_COLUMNS, "label", path)
    if table.num_rows == 0:
        raise InvalidArgumentError(f"{path} has no rows: the dataset is empty")
    ycol = table.column(yname)
    if ycol.null_count:
        raise InvalidArgumentError(f"{path}: label column {yname!r} has {ycol.null_count} nulls")
    labels = check_labels(ycol.to_numpy(), f"{path}:{yname}")
    extra = {}
    for col in columns:
        if col not in names:
            raise InvalidArgumentError(f"{path} has no column {col!r} to keep (columns: {list(names)})")
        extra[col] = _table_column(table.column(col), col, path)
    source = {**source, "sample_column": xname, "label_column": yname}
    kind, encoded, raw = _table_samples(table.column(xname), xname, path)
    if raw is not None:
        split = array_split(
            raw, labels, class_names=class_names, columns=extra, source=source, sample_shape=sample_shape, what=xname
        )
    else:
        if sample_shape is not None:
            raise InvalidArgumentError(
                f"--sample-shape applies to numeric samples; column {xname!r} holds {kind} bytes"
            )
        split = encoded_split(encoded or [], labels, codec=kind, class_names=class_names, columns=extra, source=source)
    return [dataclasses.replace(split, suffix=suffix)] if suffix else [split]


# -- image folder ------------------------------------------------------------------------------------------------


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"image {path} disappeared during ingest") from None


def imagefolder_splits(root: Path | str) -> list[Split]:
    """The split of an image-folder tree (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"image folder {root} not found (or not a directory)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InvalidArgumentError(
            f"{root} has no class sub-directories; an image folder is root/<class>/<image>.png|jpg"
        )
    files: list[Path] = []
    labels: list[int] = []
    codecs: dict[str, Path] = {}
    ignored = 0
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in filenames:
                if fname.startswith("."):
                    continue
                codec = IMAGE_EXTENSIONS.get(Path(fname).suffix.lower())
                if codec is None:
                    ignored += 1
                    continue
                p = Path(dirpath) / fname
                codecs.setdefault(codec, p)
                found.append(p)
        if not found:
            raise InvalidArgumentError(
                f"class directory {root / cls} holds no .png/.jpg/.jpeg images; remove it or add images"
            )
        found.sort()
        files.extend(found)
        labels.extend([label] * len(found))
    if len(codecs) > 1:
        raise InvalidArgumentError(
            f"{root} mixes png and jpeg images (e.g. {codecs['png']} and {codecs['jpeg']}); a dataset has one "
            "codec: convert the images to one format first"
        )
    (codec,) = codecs

    def values() -> Iterator[Buffer]:
        for p in files:
            yield _read_image(p)

    relpaths = np.array([str(p.relative_to(root)) for p in files], dtype=str)
    source = {"kind": "imagefolder", "path": str(root.absolute()), "ignored_files": ignored}
    return [
        encoded_split(
            values(),
            np.array(labels, dtype=np.int64),
            codec=codec,
            class_names=classes,
            columns={"relpath": relpaths},
            source=source,
        )
    ]


# -- generated sets ----------------------------------------------------------------------------------------------


def _split_sizes(total: int, test_fraction: float, what: str) -> tuple[int, int]:
    if not 0.0 <= test_fraction < 1.0:
        raise InvalidArgumentError(f"test fraction must be in [0, 1); got {test_fraction}")
    n_test = round(total * test_fraction)
    n_train = total - n_test
    if n_train < 1 or (test_fraction > 0 and n_test < 1):
        raise InvalidArgumentError(
            f"{what}: {total} samples are too few to split with test fraction {test_fraction}; ask for more samples"
        )
    return n_train, n_test


def mnist1d_splits(num_samples: int = 5000, seed: int = 0, test_fraction: float = 0.2) -> list[Split]:
    """MNIST-1D generated by the ``mnist1d`` package (see the module docstring)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise InvalidArgumentError(
            "the mnist1d source needs the mnist1d package: pip install 'nessa[datasets]'"
        ) from exc
    if num_samples < 10:
        raise InvalidArgumentError(f"mnist1d needs at least 10 samples (one per class); got {num_samples}")
    _split_sizes(num_samples, test_fraction, "mnist1d")
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    args.train_split = 1.0 - float(test_fraction)
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (mnist1d reseeds them)
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    names = [str(i) for i in range(10)]
    source = {"kind": "mnist1d", "num_samples": int(num_samples), "seed": int(seed), "test_fraction": test_fraction}
    x = np.asarray(data["x"], dtype=np.float32)
    splits = [array_split(x, data["y"], class_names=names, source={**source, "split": "train"})]
    if len(data["y_test"]):
        x_test = np.asarray(data["x_test"], dtype=np.float32)
        splits.append(
            array_split(
                x_test,
                data["y_test"],
                class_names=names,
                source={**source, "split": "test"},
                suffix=TEST_SUFFIX,
                what="x_test",
            )
        )
    return splits


def digits_splits(num_samples: int | None = None, seed: int = 0, test_fraction: float = 0.2) -> list[Split]:
    """scikit-learn's digits as uint8 (1, 8, 8) images (see the module docstring)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise InvalidArgumentError("the digits source needs scikit-learn: pip install 'nessa[datasets]'") from exc
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    x = images.astype(np.uint8).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    total = len(y) if num_samples is None else int(num_samples)
    if not 1 <= total <= len(y):
        raise InvalidArgumentError(f"digits has {len(y)} samples; --num-samples must be 1..{len(y)}, got {total}")
    n_train, _n_test = _split_sizes(total, test_fraction, "digits")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(y))[:total]
    train, test = np.sort(chosen[:n_train]), np.sort(chosen[n_train:])
    names = [str(i) for i in range(10)]
    source = {"kind": "digits", "num_samples": total, "seed": int(seed), "test_fraction": test_fraction}
    splits = [array_split(x[train], y[train], class_names=names, source={**source, "split": "train"})]
    if len(test):
        splits.append(
            array_split(x[test], y[test], class_names=names, source={**source, "split": "test"}, suffix=TEST_SUFFIX)
        )
    return splits


def _synthetic_patterns(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x5EED])
    coarse = rng.uniform(0.0, 255.0, size=(_SYNTH_CLASSES, 3, 4, 4))
    return coarse.repeat(8, axis=2).repeat(8, axis=3).astype(np.float32)


def _synthetic_labels(n: int, seed: int, split: int) -> np.ndarray:
    return np.random.default_rng([seed, split, 1]).integers(0, _SYNTH_CLASSES, size=n).astype(np.int64)


def _synthetic_chunks(labels: np.ndarray, seed: int, split: int) -> Iterator[np.ndarray]:
    patterns = _synthetic_patterns(seed)
    for c, start in enumerate(range(0, len(labels), _SYNTH_CHUNK)):
        y = labels[start : start + _SYNTH_CHUNK]
        noise = np.random.default_rng([seed, split, 2, c]).integers(
            0, 256, size=(len(y), *_SYNTH_SHAPE), dtype=np.uint8
        )
        x = 0.6 * patterns[y] + 0.4 * noise.astype(np.float32)
        yield np.clip(np.rint(x), 0, 255).astype(np.uint8)


def synthetic_arrays(num_samples: int, seed: int = 0, split: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic CIFAR-shaped set as arrays: uint8 (n, 3, 32, 32) images and int64 labels.

    ``split`` 0 is what ``synthetic`` ingests as ``DEST``, 1 as ``DEST-test``.
    """
    if num_samples < 1:
        raise InvalidArgumentError(f"synthetic needs at least one sample; got {num_samples}")
    labels = _synthetic_labels(num_samples, seed, split)
    return np.concatenate(list(_synthetic_chunks(labels, seed, split))), labels


def synthetic_splits(num_samples: int = 60000, seed: int = 0, test_fraction: float = 1 / 6) -> list[Split]:
    """Synthetic CIFAR-shaped images, generated chunk by chunk while they are written (see the module docstring)."""
    n_train, n_test = _split_sizes(num_samples, test_fraction, "synthetic")
    names = [str(i) for i in range(_SYNTH_CLASSES)]
    source = {"kind": "synthetic", "num_samples": num_samples, "seed": int(seed), "test_fraction": test_fraction}
    splits = []
    for split, (n, suffix) in enumerate(((n_train, ""), (n_test, TEST_SUFFIX))):
        if n == 0:
            continue
        labels = _synthetic_labels(n, seed, split)

        def values(labels: np.ndarray = labels, split: int = split) -> Iterator[Buffer]:
            for chunk in _synthetic_chunks(labels, seed, split):
                flat = chunk.reshape(len(chunk), -1)
                for row in flat:
                    yield row.data

        splits.append(
            Split(
                labels=labels,
                codec=Codec.raw(np.uint8, _SYNTH_SHAPE),
                values=values(),
                class_names=check_class_names(labels, names),
                source={**source, "split": "train" if split == 0 else "test"},
                suffix=suffix,
            )
        )
    return splits


# -- entry points ------------------------------------------------------------------------------------------------


def load_source(
    source: str | Path,
    *,
    format: str | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    test_fraction: float | None = None,
    sample_column: str | None = None,
    label_column: str | None = None,
    sample_shape: Sequence[int] | None = None,
    columns: Sequence[str] = (),
) -> list[Split]:
    """Resolve ``source`` and return its splits (nothing is written).

    Args:
        source: a path, or a generated set's name.
        format: one of :data:`FORMATS` (default: inferred from the path's suffix, a directory, or the name).
        num_samples: generated sets only: total samples over both splits.
        seed: generated sets only (default 0).
        test_fraction: generated sets only: the share that goes to ``DEST-test`` (0 for none).
        sample_column: npz/parquet/arrow: the samples' array or column.
        label_column: npz/parquet/arrow: the labels' array or column.
        sample_shape: npz/parquet/arrow with numeric samples: the per-sample shape to record.
        columns: npz/parquet/arrow: extra per-sample columns to keep.

    Raises:
        NotFoundError: the source path does not exist.
        InvalidArgumentError: an unknown format, options that do not apply to it, or bad data.
    """
    if format is None:
        fmt = infer_format(source)
    elif format not in FORMATS:
        raise InvalidArgumentError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    else:
        fmt = format
    if fmt in GENERATED:
        if sample_column or label_column or sample_shape or columns:
            raise InvalidArgumentError(
                f"{fmt} is generated: column, shape and extra-column options apply to file sources only"
            )
        default_n, default_frac = _DEFAULTS[fmt]
        n = default_n if num_samples is None else int(num_samples)
        frac = default_frac if test_fraction is None else float(test_fraction)
        s = 0 if seed is None else int(seed)
        if fmt == "mnist1d":
            return mnist1d_splits(n, s, frac)
        if fmt == "digits":
            return digits_splits(None if num_samples is None else n, s, frac)
        return synthetic_splits(n, s, frac)
    if num_samples is not None or seed is not None or test_fraction is not None:
        raise InvalidArgumentError(
            f"--num-samples, --seed and --test-fraction apply to generated sets ({', '.join(GENERATED)}), not to a "
            f"{fmt} file; to ingest part of a file, slice it first"
        )
    path = Path(source)
    if not path.exists():
        raise NotFoundError(f"source {path} not found")
    if fmt == "imagefolder":
        if sample_column or label_column or sample_shape or columns:
            raise InvalidArgumentError("column, shape and extra-column options do not apply to an image folder")
        return imagefolder_splits(path)
    if fmt in ("hfdisk", "webdataset", "csv"):
        if fmt == "webdataset":
            if sample_column or label_column or sample_shape or columns:
                raise InvalidArgumentError("column, shape and extra-column options do not apply to WebDataset shards")
            return webdataset_splits(path)
        if fmt == "csv":
            if sample_shape:
                raise InvalidArgumentError("--sample-shape does not apply to CSV (each row is one flat vector)")
            return csv_splits(path, label_column=label_column, columns=columns, sample_column=sample_column)
        return hfdisk_splits(
            path, sample_column=sample_column, label_column=label_column, sample_shape=sample_shape, columns=columns
        )
    if fmt == "npz":
        return npz_splits(
            path, sample_column=sample_column, label_column=label_column, sample_shape=sample_shape, columns=columns
        )
    return table_splits(
        path,
        fmt=fmt,
        sample_column=sample_column,
        label_column=label_column,
        sample_shape=sample_shape,
        columns=columns,
    )


def ingest(
    source: str | Path,
    dest: str | Path,
    *,
    format: str | None = None,
    shards: int = 1,
    overwrite: bool = False,
    quiet: bool = True,
    map_size: int | None = None,
    dtype: str | None = None,
    **options: Any,
) -> list[Path]:
    """Ingest ``source`` into the dataset directory ``dest`` (and ``DEST-test``), atomically.

    Args:
        source: a path or a generated set's name (see :func:`load_source` for ``format`` and ``options``).
        dest: the dataset directory to create.
        format: the source's format (default: inferred).
        shards: LMDB shards per dataset.
        overwrite: atomically replace existing datasets.
        quiet: no progress bar.
        map_size: initial LMDB map size per shard (default: estimated).
        dtype: cast numeric samples to this dtype (:data:`CAST_DTYPES`; e.g. a Parquet file's float64 to the
            float32 the trainer and proxies take); recorded in the manifest's ``source``.
        **options: passed to :func:`load_source` (``num_samples``, ``seed``, ``test_fraction``, ``sample_column``,
            ``label_column``, ``sample_shape``, ``columns``).

    Returns:
        The published dataset directories (``DEST`` first).
    """
    splits = load_source(source, format=format, **options)
    if dtype is not None:
        splits = [cast_split(split, dtype) for split in splits]
    return ingest_splits(splits, dest, shards=shards, overwrite=overwrite, quiet=quiet, map_size=map_size)


#: Dtypes ``ingest(..., dtype=)`` casts numeric samples to.
CAST_DTYPES = ("float32", "float16", "uint8", "int64")


def cast_split(split: Split, dtype: str) -> Split:
    """``split`` with its raw samples cast to ``dtype`` (recorded in the manifest's ``source`` as ``cast``).

    Raises:
        InvalidArgumentError: an unknown dtype, encoded samples, or values that do not fit (a cast to uint8 of
            values outside 0..255, or of non-integers).
    """
    if dtype not in CAST_DTYPES:
        raise InvalidArgumentError(f"--dtype {dtype!r} is not supported; choose one of {', '.join(CAST_DTYPES)}")
    codec = split.codec
    if not codec.is_raw or codec.shape is None or codec.numpy_dtype is None:
        raise InvalidArgumentError(
            f"--dtype casts numeric samples; these are {codec.kind} bytes (images keep their encoding)"
        )
    have, want = codec.numpy_dtype, np.dtype(dtype)
    if have == want:
        return split
    shape = codec.shape

    def cast(values: Iterable[Any]) -> Iterator[bytes]:
        for v in values:
            arr = np.frombuffer(v, dtype=have).reshape(shape)
            if want.kind in "iu":
                info = np.iinfo(want)
                if (
                    not np.all(np.isfinite(arr))
                    or np.any(arr != np.round(arr))
                    or arr.min() < info.min
                    or arr.max() > info.max
                ):
                    raise InvalidArgumentError(
                        f"--dtype {dtype}: a sample holds values outside {dtype}'s range or non-integers; cast to "
                        "float32 instead"
                    )
            yield np.ascontiguousarray(arr.astype(want)).tobytes()

    return dataclasses.replace(
        split,
        codec=Codec.raw(want, shape),
        values=cast(split.values),
        source={**dict(split.source), "cast": f"{have.name} -> {want.name}"},
    )


# -- more file sources: Hugging Face datasets, WebDataset, CSV ------------------------------------------------------

_IMAGE_EXTS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg"}
_LABEL_EXTS = ("cls", "label", "target", "txt")


def is_hfdisk(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


# -- Hugging Face datasets -----------------------------------------------------------------------------------------


def hfdisk_splits(
    path: Path | str,
    *,
    sample_column: str | None = None,
    label_column: str | None = None,
    sample_shape: Sequence[int] | None = None,
    columns: Sequence[str] = (),
) -> list[Split]:
    """The splits of a ``save_to_disk`` directory (see the module docstring)."""
    path = Path(path)
    try:
        import datasets
    except ImportError:
        raise InvalidArgumentError(
            f"{path} is a Hugging Face datasets directory; reading it needs the datasets package: pip install datasets"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... on a broken directory
        raise InvalidArgumentError(
            f"{path} is not a readable datasets directory ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded.keys())
        main = "train" if "train" in loaded else names[0]
        test = next((n for n in ("test", "validation") if n in loaded and n != main), None)
        parts = [(main, "")] + ([(test, TEST_SUFFIX)] if test else [])
    else:
        parts = [("", "")]
    out: list[Split] = []
    for name, suffix in parts:
        ds = loaded[name] if name else loaded
        ds = ds.flatten_indices() if getattr(ds, "_indices", None) is not None else ds
        table = ds.data.table
        yname = _pick(table.column_names, label_column, _LABEL_COLUMNS, "label", path)
        feature = ds.features.get(yname)
        class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        source = {"kind": "hfdisk", "path": str(path.absolute()), **({"split": name} if name else {})}
        out += table_to_splits(
            table,
            path,
            source,
            sample_column=sample_column,
            label_column=yname,
            sample_shape=sample_shape,
            columns=columns,
            class_names=class_names,
            suffix=suffix,
        )
    return out


# -- WebDataset ----------------------------------------------------------------------------------------------------


def _shards(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    shards = sorted(p for p in path.iterdir() if p.suffix == ".tar" and not p.name.startswith("."))
    if not shards:
        raise InvalidArgumentError(f"{path} has no .tar shards; a WebDataset is one .tar or a directory of them")
    return shards


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in the shard's order (members of a key are consecutive)."""
    key: str | None = None
    fields: dict[str, bytes] = {}
    try:
        with tarfile.open(shard, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                if name.startswith(".") or "." not in name:
                    continue
                base, ext = member.name.split(".", 1) if "/" not in member.name else _split_key(member.name)
                if key is not None and base != key:
                    yield key, fields
                    fields = {}
                key = base
                f = tar.extractfile(member)
                fields[ext.lower()] = f.read() if f is not None else b""
    except tarfile.TarError as exc:
        raise InvalidArgumentError(f"{shard} is not a readable tar file ({exc})") from exc
    if key is not None:
        yield key, fields


def _split_key(name: str) -> tuple[str, str]:
    folder, file = name.rsplit("/", 1)
    base, ext = file.split(".", 1)
    return f"{folder}/{base}", ext


def webdataset_splits(path: Path | str) -> list[Split]:
    """The split of WebDataset shards (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"source {path} not found")
    shards = _shards(path)
    values: list[bytes] = []
    labels: list[int] = []
    codec: str | None = None
    for shard in shards:
        for key, fields in _samples(shard):
            images = [e for e in fields if e in _IMAGE_EXTS]
            label_ext = next((e for e in _LABEL_EXTS if e in fields), None)
            if len(images) != 1 or label_ext is None:
                raise InvalidArgumentError(
                    f"{shard}: sample {key!r} has members {sorted(fields)}; each sample needs one png/jpg image and "
                    f"a label ({'/'.join(_LABEL_EXTS)})"
                )
            kind = _IMAGE_EXTS[images[0]]
            if codec is not None and kind != codec:
                raise InvalidArgumentError(f"{shard}: sample {key!r} is {kind} but earlier ones are {codec}")
            codec = kind
            try:
                labels.append(int(fields[label_ext].decode().strip()))
            except ValueError:
                raise InvalidArgumentError(
                    f"{shard}: sample {key!r} has label {fields[label_ext][:20]!r}; labels must be integers"
                ) from None
            values.append(fields[images[0]])
    if not values:
        raise InvalidArgumentError(f"{path} holds no samples")
    source = {"kind": "webdataset", "path": str(path.absolute()), "shards": len(shards)}
    return [encoded_split(values, np.asarray(labels, np.int64), codec=codec or "png", source=source)]


# -- CSV -----------------------------------------------------------------------------------------------------------


def csv_splits(
    path: Path | str, *, label_column: str | None = None, columns: Sequence[str] = (), sample_column: str | None = None
) -> list[Split]:
    """The split of a CSV file (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    if sample_column is not None:
        raise InvalidArgumentError("--sample-column does not apply to CSV: every numeric column but the label is used")
    try:
        table = pacsv.read_csv(path)
    except FileNotFoundError:
        raise NotFoundError(f"source {path} not found") from None
    except (pa.ArrowException, OSError) as exc:
        raise InvalidArgumentError(f"{path} is not a readable CSV file ({exc})") from exc
    if table.num_rows == 0:
        raise InvalidArgumentError(f"{path} has no rows: the dataset is empty")
    yname = _pick(table.column_names, label_column, _LABEL_COLUMNS, "label", path)
    ycol = table.column(yname)
    if ycol.null_count:
        raise InvalidArgumentError(f"{path}: label column {yname!r} has {ycol.null_count} empty values")
    class_names: list[str] | None = None
    if pa.types.is_string(ycol.type) or pa.types.is_large_string(ycol.type):
        raw = np.array(ycol.to_pylist(), dtype=str)
        class_names = sorted(set(raw.tolist()))
        labels = np.searchsorted(np.array(class_names), raw).astype(np.int64)
    else:
        labels = check_labels(ycol.to_numpy(), f"{path}:{yname}")
    extra: dict[str, Any] = {}
    for col in columns:
        if col not in table.column_names:
            raise InvalidArgumentError(f"{path} has no column {col!r} to keep (columns: {table.column_names})")
        extra[col] = _table_column(table.column(col), col, path)
    features = [
        n
        for n in table.column_names
        if n != yname
        and n not in extra
        and (pa.types.is_integer(table.column(n).type) or pa.types.is_floating(table.column(n).type))
    ]
    if not features:
        raise InvalidArgumentError(f"{path} has no numeric columns besides the label {yname!r} to use as samples")
    for n in features:
        if table.column(n).null_count:
            raise InvalidArgumentError(f"{path}: column {n!r} has empty values; fill or drop them")
    x = np.stack([table.column(n).to_numpy().astype(np.float32) for n in features], axis=1)
    source = {"kind": "csv", "path": str(path.absolute()), "label_column": yname, "features": features}
    return [array_split(x, labels, class_names=class_names, columns=extra, source=source)]
