"""``nessa train``: train on what a daemon selects; flags generated from :class:`~nessa.trainer.config.TrainConfig`."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from nessa.cli.options import Command, Flag, UsageError, add_config_flags, given, option_pair

__all__ = ["COMMANDS", "check_fraction_has_method"]

#: Where a flag differs from its field's derived form; fields set by other flags or not by users are hidden.
_FLAGS = {
    "target": Flag(help="the storage daemon's HOST[:PORT] (port 50051 when omitted)"),
    "fraction": Flag(help="samples per epoch as a fraction of the training set, in (0, 1]; needs --method"),
    "method": Flag(help="full, or a selection method (`nessa methods` lists them: random, craig, crest, ...)"),
    "options": Flag(
        names=("--option",),
        parse=option_pair,
        action="append",
        metavar="KEY=VALUE",
        help="selection method option (repeatable; `nessa methods` lists each method's)",
    ),
    "token": Flag(help="bearer token for the daemon"),
    "tls": Flag(names=("--tls-ca",), metavar="PEM", help="the CA that signed the daemon's certificate (enables TLS)"),
    "quantize": Flag(hidden=True),
    "progress_desc": Flag(hidden=True),
}


def check_fraction_has_method(fields: dict[str, object]) -> None:
    """``--fraction`` without a selection method would silently train on the full data: refuse it."""
    if "fraction" in fields and fields["fraction"] != 1 and fields.get("method", "full") == "full":
        raise UsageError(
            f"--fraction {fields['fraction']} needs a selection method: add --method random (or craig, crest, ...; "
            f"`nessa methods` lists them), or drop --fraction to train on the full data"
        )


def _add(p: argparse.ArgumentParser) -> None:
    from nessa.trainer.config import TrainConfig
    from nessa.trainer.models import MODELS

    flags = {
        **_FLAGS,
        "model": Flag(
            metavar="MODEL",
            help=f"{', '.join(sorted(MODELS))}, or your own model's factory as module:function (on PYTHONPATH; "
            "called with num_classes=, channels=, input_shape= where it takes them)",
        ),
    }
    add_config_flags(p, TrainConfig, flags, defaults={"token": "$NESSA_TOKEN", "options": "none"})
    p.add_argument("--fp32-proxy", action="store_true", help="send float32 proxy weights instead of int8")
    p.add_argument("--report", default=None, help="write the run's result (per-epoch records) as JSON here")


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _run(args: argparse.Namespace) -> int:
    import json
    import logging
    import os

    from nessa.cli.connect import check_port_free, connect, normalize_target
    from nessa.trainer.config import TrainConfig
    from nessa.trainer.loop import train
    from nessa.trainer.report import format_bytes

    fields = given(args, TrainConfig)
    check_fraction_has_method(fields)
    fields["target"] = normalize_target(fields["target"])
    fields["options"] = dict(fields.get("options") or [])
    fields["token"] = fields.get("token") or os.environ.get("NESSA_TOKEN") or None
    if args.fp32_proxy:
        fields["quantize"] = None
    config = TrainConfig(**fields)
    check_port_free(config.metrics_port, "--metrics-port")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    connect(config.target, config.token, config.tls, say=say).close()
    signal.signal(signal.SIGTERM, _stop)  # like Ctrl-C: abandon the epoch; a checkpointed run resumes from it
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = train(config, echo=say)
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


COMMANDS = {
    "train": Command(
        help="train a model on what a storage daemon selects, epoch by epoch",
        description="Each epoch: push an int8 proxy of the model (for methods that need one), ask the daemon for a "
        "selection, stream it and train with the per-sample weighted loss; evaluate on the test dataset. The next "
        "epoch's selection is requested while this one trains (unless --no-pipeline). With --checkpoint-dir the run "
        "checkpoints every epoch and resumes where it stopped.",
        add=_add,
        run=_run,
    ),
}
