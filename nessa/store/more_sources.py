"""More ingest sources: a Hugging Face ``datasets`` directory, WebDataset tar shards, CSV.

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
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nessa.errors import InvalidArgumentError, NotFoundError
from nessa.store.writer import TEST_SUFFIX, Split, array_split, encoded_split

__all__ = ["csv_splits", "hfdisk_splits", "is_hfdisk", "webdataset_splits"]

_IMAGE_EXTS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg"}
_LABEL_EXTS = ("cls", "label", "target", "txt")
_LABEL_COLUMNS = ("y", "label", "labels", "target")


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
    from nessa.store.sources import _LABEL_COLUMNS as labels_default
    from nessa.store.sources import _pick, table_to_splits

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
        yname = _pick(table.column_names, label_column, labels_default, "label", path)
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

    from nessa.store.sources import _pick, _table_column

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
        from nessa.store.writer import check_labels

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
