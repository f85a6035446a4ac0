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


def _cmd_demo(args: argparse.Namespace) -> int:
    print(
        "nessa demo: not built yet. The end-to-end demo (ingest MNIST-1D, serve it, train with full data, "
        "random and NeSSA selection side by side) arrives with the trainer; until then use `nessa ingest`, "
        "`nessa verify` and `nessa info`.",
        file=sys.stderr,
    )
    return 3


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo (not built yet)")
    p.set_defaults(handler=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="nessa", description="NeSSA: near-storage data selection.")
    parser.add_argument("--version", action="version", version=f"nessa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo,):
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
