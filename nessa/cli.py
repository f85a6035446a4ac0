"""The ``nessa`` command.

Each subcommand lives in a small ``_cmd_<name>`` function with an ``_add_<name>`` parser builder; ``main``
wires them together. Errors from NeSSA (:class:`nessa.errors.NessaError`) print one line saying what to fix
and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from nessa import __version__
from nessa.errors import NessaError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def _option_pair(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value); VALUE is read as JSON when it parses (numbers, true/false), else a string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE; write e.g. --option optimizer=stochastic")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def _cmd_train(args: argparse.Namespace) -> int:
    # Imported here: the `nessa` library does not depend on the trainer (nor on torch at import time).
    import json
    import logging
    import os

    from nessa.trainer.config import TrainConfig
    from nessa.trainer.loop import train
    from nessa.trainer.report import format_bytes

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    config = TrainConfig(
        target=args.target,
        dataset=args.dataset,
        test_dataset=args.test_dataset,
        model=args.model,
        method=args.method,
        fraction=args.fraction,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        seed=args.seed,
        reselect_every=args.reselect_every,
        device=args.device,
        pipeline=not args.no_pipeline,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every_steps=args.checkpoint_every_steps,
        metrics_port=args.metrics_port,
        metrics_linger=args.metrics_linger,
        options=dict(args.option or []),
        engine=args.engine,
        quantize=None if args.fp32_proxy else "int8",
        token=args.token or os.environ.get("NESSA_TOKEN") or None,
        tls=args.tls_ca,
        crest_tau=args.crest_tau,
        crest_interval_mul=args.crest_interval_mul,
        crest_batch_num_mul=args.crest_batch_num_mul,
        crest_check_size=args.crest_check_size,
        torch_threads=args.torch_threads,
        cpus=args.cpus,
        progress=not args.no_progress,
    )
    result = train(config, echo=lambda line: print(line, file=sys.stderr, flush=True))
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(result.to_dict(), fh, indent=2)
            fh.write("\n")
    print(
        f"{result.method}: final accuracy {result.final_accuracy * 100:.2f}% (best {result.best_accuracy * 100:.2f}%), "
        f"{len(result.epochs)} epochs in {result.wall_seconds:.1f} s (data wait {result.data_wait_seconds:.1f} s), "
        f"{format_bytes(result.bytes_to_trainer)} received, {format_bytes(result.bytes_to_storage)} of proxies sent"
    )
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on what a storage daemon selects, epoch by epoch",
        description="Each epoch: push an int8 proxy of the model (for methods that need one), ask the daemon for a "
        "selection, stream it and train with the per-sample weighted loss; evaluate on the test dataset. The next "
        "epoch's selection is requested while this one trains (unless --no-pipeline). With --checkpoint-dir the run "
        "checkpoints every epoch and resumes where it stopped.",
    )
    p.add_argument("--target", required=True, help="the storage daemon's HOST:PORT")
    p.add_argument("--dataset", required=True, help="training dataset name")
    p.add_argument("--test-dataset", required=True, help="test dataset name (evaluated after every epoch)")
    p.add_argument("--model", default="cnn1d", choices=("mlp", "cnn1d", "resnet20"), help="model (default: cnn1d)")
    p.add_argument(
        "--method", default="full", help="full, or a selector: random, balanced, craig, crest, ... (default: full)"
    )
    p.add_argument("--fraction", type=float, default=0.1, help="samples per epoch as a fraction (default: 0.1)")
    p.add_argument(
        "--option", action="append", type=_option_pair, metavar="KEY=VALUE", help="selector option (repeatable)"
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    p.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default: 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default: 5e-4)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear LR warm-up in epochs (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, selections and order (default: 0)")
    p.add_argument("--reselect-every", type=int, default=1, help="select every R epochs, reuse in between (1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto = cuda when present)")
    p.add_argument("--no-pipeline", action="store_true", help="select strictly before each epoch")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint here every epoch; resume from it")
    p.add_argument(
        "--checkpoint-every-steps", type=int, default=0, help="also checkpoint every N steps inside an epoch"
    )
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--metrics-linger",
        type=float,
        default=0.0,
        help="after the last epoch, serve /metrics this many seconds more so Prometheus scrapes the end (0)",
    )
    p.add_argument("--engine", default="", help="the daemon's proxy engine: opencl or torch (default: the daemon's)")
    p.add_argument("--fp32-proxy", action="store_true", help="send float32 proxy weights instead of int8")
    p.add_argument("--token", default=None, help="bearer token (default: $NESSA_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="PEM of the CA that signed the daemon's certificate (enables TLS)")
    p.add_argument("--crest-tau", type=float, default=0.1, help="CREST: reselect when the loss model's error > tau")
    p.add_argument("--crest-interval-mul", type=float, default=1.0, help="CREST: h, check-interval multiplier")
    p.add_argument("--crest-batch-num-mul", type=int, default=5, help="CREST: b, mini-batch coresets per interval")
    p.add_argument("--crest-check-size", type=int, default=512, help="CREST: random samples in the check set (512)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cpus", default="", help="pin the trainer to these CPUs, e.g. 1 (default: not pinned)")
    p.add_argument("--report", default=None, help="write the run's result (per-epoch records) as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nessa.trainer.demo import DEFAULT_METHODS, QUICK, DemoConfig, print_report, run_demo

    quick = QUICK if args.quick else {}
    num_samples = args.num_samples if args.num_samples is not None else quick.get("num_samples", 50_000)
    epochs = args.epochs if args.epochs is not None else quick.get("epochs", 15)
    methods = tuple(m.strip() for m in (args.methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip())
    cfg = DemoConfig(
        out=Path(args.out),
        num_samples=num_samples,
        methods=methods,
        fraction=args.fraction,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        seed=args.seed,
        device=args.device,
        engine=args.engine,
        pipeline=not args.no_pipeline,
        reselect_every=args.reselect_every,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        progress=not args.no_progress,
        torch_threads=args.torch_threads,
    )
    report = run_demo(cfg)
    print_report(report, cfg.out)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="end to end: generate MNIST-1D, serve it, train with full data, random and NeSSA selection",
        description="Generate MNIST-1D, ingest it into a temporary data directory, start a storage daemon on a free "
        "loopback port and train the 1-D CNN with each method (same epochs, seed and schedule); print accuracy, wall "
        "time, bytes moved and time to full-data accuracy - 1 pt side by side, and write report.json and report.png.",
    )
    p.add_argument("--out", default="nessa-demo-out", help="output directory (default: ./nessa-demo-out)")
    p.add_argument("--quick", action="store_true", help="a smaller set and fewer epochs (under 3 minutes)")
    p.add_argument(
        "--num-samples", type=int, default=None, help="MNIST-1D samples, train+test (a fifth is test; 50000)"
    )
    p.add_argument("--methods", default=None, help="comma-separated methods (default: full,random,craig,crest)")
    p.add_argument("--fraction", type=float, default=0.1, help="budget of the selection methods (default: 0.1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per method (default: 15; --quick: 4)")
    p.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default: 0.1)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear LR warm-up in epochs (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--engine", default="opencl", choices=("opencl", "torch"), help="the daemon's proxy engine")
    p.add_argument("--no-pipeline", action="store_true", help="select strictly before each epoch")
    p.add_argument("--reselect-every", type=int, default=1, help="select every R epochs (not CREST; default: 1)")
    p.add_argument("--data-dir", default=None, help="keep the generated datasets here (reused if present)")
    p.add_argument("--torch-threads", type=int, default=1, help="trainer torch CPU threads (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_demo)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write it like 3,32,32") from None
    if not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write it like 3,32,32")
    return shape


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _disk_bytes(path: str) -> int:
    import os

    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _cmd_ingest(args: argparse.Namespace) -> int:
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
    )
    if not args.quiet:
        for path in paths:
            m = Manifest.load(path)
            print(
                f"{path}: {m.num_samples} samples, {m.num_classes} classes, {m.codec.describe()}, "
                f"{len(m.shards)} shard(s), {_human_bytes(m.total_bytes)}"
            )
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    from nessa.store.sources import FORMATS, GENERATED

    p = sub.add_parser(
        "ingest",
        help="store a dataset as LMDB shards (from .npz, Parquet/Arrow, an image folder or a generated set)",
        description="Write SOURCE as a dataset directory DEST (and DEST-test when the source has a test split), "
        "atomically: a crash or bad input leaves nothing under DEST. SOURCE is a path (format from its suffix, or "
        f"a directory for an image folder) or a generated set: {', '.join(GENERATED)}.",
    )
    p.add_argument("source", help=f"a .npz/.parquet/.arrow file, an image-folder directory, or {'/'.join(GENERATED)}")
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
    p.add_argument(
        "--sample-shape", type=_parse_shape, default=None, help="numeric samples: per-sample shape, e.g. 3,32,32"
    )
    p.add_argument(
        "--column", action="append", metavar="NAME", help="npz/parquet/arrow: keep this per-sample column (repeat)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(handler=_cmd_ingest)


def _cmd_verify(args: argparse.Namespace) -> int:
    from nessa.store import verify

    status = 0
    for path in args.dest:
        if args.add_checksums:
            from nessa.store.verify import add_checksums

            print(f"{path}: {'checksums added' if add_checksums(path) else 'already has checksums'}")
        report = verify(path, raise_on_error=False)
        if report.ok:
            if not args.quiet:
                print(
                    f"{report.path}: ok ({report.shards_checked} shard(s), {report.samples_checked} samples, "
                    f"{_human_bytes(report.bytes_checked)} checked)"
                )
            continue
        status = 1
        print(f"nessa verify: {report.path}: {len(report.problems)} problem(s):", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
        print("  re-ingest the dataset (or restore the damaged shards from a copy)", file=sys.stderr)
    return status


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check every shard of a dataset against its manifest (count, keys, sha256)",
        description="Read every shard of each dataset and check record count, key range, value sizes and sha256 "
        "against the manifest. Exit status: 0 sound, 1 problems found (each printed with the shard's path), "
        "2 not a dataset.",
    )
    p.add_argument("dest", nargs="+", help="dataset directories")
    p.add_argument("--quiet", action="store_true", help="print only problems")
    p.add_argument("--add-checksums", action="store_true", help="first add per-sample checksums to old datasets")
    p.set_defaults(handler=_cmd_verify)


def _cmd_info(args: argparse.Namespace) -> int:
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
        ("bytes", f"{m.total_bytes} ({_human_bytes(m.total_bytes)}) stored, {_human_bytes(disk)} on disk"),
        ("columns", ", ".join(c.name for c in m.columns) or "none"),
        ("created", m.created),
        ("source", ", ".join(f"{k}={v}" for k, v in m.source.items())),
    ]
    for key, value in rows:
        print(f"{key + ':':<9} {value}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a stored dataset (samples, classes, codec, shards, bytes)")
    p.add_argument("dest", help="the dataset directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_cmd_info)


def _cmd_serve(args: argparse.Namespace) -> int:
    # The command line is the composition root: it alone reaches into nessa.services (imported lazily, so the
    # library never depends on the daemon).
    import logging

    from nessa.services.storage.config import DaemonConfig
    from nessa.services.storage.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = DaemonConfig(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=DaemonConfig.token_from_env(args.token),
        state_dir=args.state_dir,
        engine=args.engine,
        max_workers=args.max_workers,
        max_proxy_bytes=args.max_proxy_bytes,
        max_concurrent_selections=args.max_concurrent_selections,
        grace_seconds=args.grace,
        cpus=args.cpus,
    )
    return serve(config)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the storage daemon over every dataset under a directory",
        description="Serve every dataset under --data-dir over gRPC (nessa.v1.Storage, health, reflection) and "
        "Prometheus metrics. SIGTERM shuts down gracefully.",
    )
    p.add_argument("--data-dir", required=True, help="directory whose sub-directories are datasets")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (default: 50051)")
    p.add_argument("--metrics-port", type=int, default=9400, help="/metrics port; 0 picks one, -1 disables (9400)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain; with --tls-key serves TLS only")
    p.add_argument("--tls-key", default=None, help="PEM private key")
    p.add_argument("--token", default=None, help="bearer token clients must send (default: $NESSA_TOKEN; none)")
    p.add_argument("--state-dir", default=None, help="where proxies and selections persist (<data-dir>/.nessa-state)")
    p.add_argument("--engine", default="opencl", choices=("opencl", "torch", "numpy"), help="proxy engine (opencl)")
    p.add_argument("--max-workers", type=int, default=16, help="RPC threads = most calls at once (default: 16)")
    p.add_argument("--cpus", default="", help="pin the daemon to these CPUs, e.g. 0 or 0-3 (default: not pinned)")
    p.add_argument("--max-proxy-bytes", type=int, default=512 << 20, help="largest proxy accepted (512 MiB)")
    p.add_argument("--max-concurrent-selections", type=int, default=4, help="Select calls at once (default: 4)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get on shutdown (10)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="nessa", description="NeSSA: near-storage data selection.")
    parser.add_argument("--version", action="version", version=f"nessa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_train, _add_ingest, _add_verify, _add_info, _add_serve):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nessa`` command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except NessaError as exc:
        print(f"nessa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
