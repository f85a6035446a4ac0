"""``nessa ingest``, ``nessa verify`` and ``nessa info``: datasets on local disk (no daemon)."""

from __future__ import annotations

import argparse
import os
import sys

from nessa.cli.options import Command, human_bytes, shape

__all__ = ["COMMANDS"]


def _disk_bytes(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _run_ingest(args: argparse.Namespace) -> int:
    from nessa.store import ingest
    from nessa.store.manifest import Manifest

    paths = ingest(
        args.source,
        args.dest,
        format=args.format,
        shards=args.shards,
        overwrite=args.overwrite,
        quiet=args.quiet,
        num_samples=args.num_samples,
        seed=args.seed,
        test_fraction=args.test_fraction,
        sample_column=args.sample_column,
        label_column=args.label_column,
        sample_shape=args.sample_shape,
        columns=tuple(args.column or ()),
        dtype=args.dtype,
    )
    if not args.quiet:
        for path in paths:
            m = Manifest.load(path)
            print(
                f"{path}: {m.num_samples} samples, {m.num_classes} classes, {m.codec.describe()}, "
                f"{len(m.shards)} shard(s), {human_bytes(m.total_bytes)}"
            )
    return 0


def _add_ingest(p: argparse.ArgumentParser) -> None:
    from nessa.store.sources import FORMATS, GENERATED

    p.description = (
        "Write SOURCE as a dataset directory DEST (and DEST-test when the source has a test split), atomically: a "
        "crash or bad input leaves nothing under DEST. SOURCE is a path (format from its suffix, or a directory for "
        f"an image folder) or a generated set: {', '.join(GENERATED)}."
    )
    p.add_argument(
        "source",
        help="a .npz/.parquet/.arrow/.csv file, an image-folder directory, a Hugging Face save_to_disk directory, "
        f"WebDataset .tar shards, or {'/'.join(GENERATED)}",
    )
    p.add_argument("dest", help="the dataset directory to create")
    p.add_argument("--format", choices=FORMATS, default=None, help="the source's format (default: inferred)")
    p.add_argument("--shards", type=int, default=1, help="LMDB shards per dataset (default: 1)")
    p.add_argument("--num-samples", type=int, default=None, help="generated sets: total samples over both splits")
    p.add_argument("--seed", type=int, default=None, help="generated sets: random seed (default: 0)")
    p.add_argument(
        "--test-fraction", type=float, default=None, help="generated sets: share written to DEST-test (0: none)"
    )
    p.add_argument("--sample-column", default=None, help="npz/parquet/arrow: the samples' array or column")
    p.add_argument("--label-column", default=None, help="npz/parquet/arrow: the labels' array or column")
    p.add_argument("--sample-shape", type=shape, default=None, help="numeric samples: per-sample shape, e.g. 3,32,32")
    p.add_argument(
        "--column", action="append", metavar="NAME", help="npz/parquet/arrow: keep this per-sample column (repeat)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "float16", "uint8", "int64"),
        help="cast numeric samples to this dtype (e.g. float64 Parquet columns to float32); recorded in the manifest",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def _run_verify(args: argparse.Namespace) -> int:
    from nessa.store import verify
    from nessa.store.verify import add_checksums

    status = 0
    for path in args.dest:
        if args.add_checksums and add_checksums(path) and not args.quiet:
            print(f"{path}: per-sample checksums added (every read is now checked)")
        report = verify(path, raise_on_error=False)
        if report.ok:
            if not args.quiet:
                print(
                    f"{report.path}: ok ({report.shards_checked} shard(s), {report.samples_checked} samples, "
                    f"{human_bytes(report.bytes_checked)} checked)"
                )
            continue
        status = 1
        print(f"nessa verify: {report.path}: {len(report.problems)} problem(s):", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
        print("  re-ingest the dataset (or restore the damaged shards from a copy)", file=sys.stderr)
    return status


def _add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("dest", nargs="+", help="dataset directories")
    p.add_argument("--quiet", action="store_true", help="print only problems")
    p.add_argument(
        "--add-checksums",
        action="store_true",
        help="give a dataset written before per-sample checksums its checksums (after verifying it)",
    )


def _run_info(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from nessa.store.manifest import Manifest

    path = Path(args.dest).absolute()
    m = Manifest.load(path)
    disk = _disk_bytes(str(path))
    if args.json:
        info = {
            "path": str(path),
            "name": m.name,
            "format_version": m.format_version,
            "num_samples": m.num_samples,
            "num_classes": m.num_classes,
            "class_names": list(m.class_names),
            "codec": m.codec.to_dict(),
            "num_shards": len(m.shards),
            "bytes": m.total_bytes,
            "disk_bytes": disk,
            "columns": [c.to_dict() for c in m.columns],
            "shards": [s.to_dict() for s in m.shards],
            "ingest_id": m.ingest_id,
            "created": m.created,
            "source": dict(m.source),
        }
        print(json.dumps(info, indent=2))
        return 0
    names = ", ".join(m.class_names[:10]) + (", ..." if m.num_classes > 10 else "")
    rows = [
        ("name", m.name),
        ("path", str(path)),
        ("samples", str(m.num_samples)),
        ("classes", f"{m.num_classes} ({names})"),
        ("codec", m.codec.describe()),
        ("shards", str(len(m.shards))),
        ("bytes", f"{m.total_bytes} ({human_bytes(m.total_bytes)}) stored, {human_bytes(disk)} on disk"),
        ("columns", ", ".join(c.name for c in m.columns) or "none"),
        ("created", m.created),
        ("source", ", ".join(f"{k}={v}" for k, v in m.source.items())),
    ]
    for key, value in rows:
        print(f"{key + ':':<9} {value}")
    return 0


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("dest", help="the dataset directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


COMMANDS = {
    "ingest": Command(
        help="store a dataset as LMDB shards (from .npz, Parquet/Arrow, an image folder or a generated set)",
        add=_add_ingest,
        run=_run_ingest,
    ),
    "verify": Command(
        help="check every shard of a dataset against its manifest (count, keys, sha256)",
        description="Read every shard of each dataset and check record count, key range, value sizes and sha256 "
        "against the manifest. Exit status: 0 sound, 1 problems found (each printed with the shard's path), "
        "2 not a dataset.",
        add=_add_verify,
        run=_run_verify,
    ),
    "info": Command(
        help="describe a stored dataset (samples, classes, codec, shards, bytes)", add=_add_info, run=_run_info
    ),
}
