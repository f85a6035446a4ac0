"""``nessa demo``: full data against selection methods on MNIST-1D; flags from :class:`~nessa.trainer.demo.DemoConfig`.

Every method and the fraction are checked before any data is generated or any training starts.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from nessa.cli.options import Command, Flag, add_config_flags, given

if TYPE_CHECKING:
    from nessa.trainer.demo import DemoConfig

__all__ = ["COMMANDS", "check_demo"]


def _methods(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _add(p: argparse.ArgumentParser) -> None:
    from nessa.proxy import ENGINES
    from nessa.trainer.demo import QUICK, DemoConfig

    flags = {
        "methods": Flag(
            parse=_methods, metavar="M1,M2,...", help="comma-separated methods (`nessa methods` lists them)"
        ),
        "engine": Flag(choices=ENGINES),
        "method_options": Flag(hidden=True),
    }
    shown = {name: f"{getattr(DemoConfig, name)}; --quick: {value}" for name, value in QUICK.items()}
    add_config_flags(p, DemoConfig, flags, defaults=shown)
    p.add_argument("--quick", action="store_true", help="a smaller set and fewer epochs")


def check_demo(cfg: DemoConfig) -> None:
    """Raise the error each run of ``cfg`` (a ``DemoConfig``) would raise, before anything runs."""
    from nessa.trainer.config import method_needs_proxy, resolve_device

    resolve_device(cfg.device)
    for method in cfg.methods:
        method_needs_proxy(cfg.selector_of(method))  # unknown methods fail here
        cfg.train_config(method, "127.0.0.1:0")  # validates the run


def _run(args: argparse.Namespace) -> int:
    from nessa.trainer.demo import QUICK, DemoConfig, print_report, run_demo

    fields = given(args, DemoConfig)
    if args.quick:
        for name, value in QUICK.items():
            fields.setdefault(name, value)
    cfg = DemoConfig(**fields)
    check_demo(cfg)
    report = run_demo(cfg)
    print_report(report, cfg.out)
    return 0


COMMANDS = {
    "demo": Command(
        help="end to end: generate MNIST-1D, serve it, train with full data, random and NeSSA selection",
        description="Generate MNIST-1D, ingest it into a temporary data directory, start a storage daemon on a free "
        "loopback port and train the 1-D CNN with each method (same epochs, seed and schedule); print accuracy, wall "
        "time, bytes moved and time to full-data accuracy - 1 pt side by side, and write report.json and report.png.",
        add=_add,
        run=_run,
    ),
}
