"""The ``nessa`` command: one module per command family, and one place that turns errors into one line.

Only the command that runs has its flags built (so ``nessa serve`` imports neither torch nor the trainer).
Every failure prints ``nessa COMMAND: error: WHAT TO FIX`` on one line; ``--debug`` adds the traceback. Exit status:

* 0 success;
* 2 the command must change: a bad flag or value, a name or path that does not exist, a state the command refuses
  (an existing destination, a busy port) — argparse errors, :class:`~nessa.errors.InvalidArgumentError`,
  :class:`~nessa.errors.NotFoundError`, :class:`~nessa.errors.FailedPreconditionError`;
* 1 the run failed: no daemon at the target, a refused token, any other error, ``nessa verify`` finding problems;
* 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from nessa import __version__
from nessa.cli import demo, distill, selection, serve, status, store, train
from nessa.cli.options import Command, Parser
from nessa.errors import FailedPreconditionError, InvalidArgumentError, NessaError, NotFoundError

__all__ = ["COMMANDS", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

#: Every subcommand, in ``nessa --help`` order.
COMMANDS: dict[str, Command] = {
    **demo.COMMANDS,
    **train.COMMANDS,
    **store.COMMANDS,
    **serve.COMMANDS,
    **status.COMMANDS,
    **selection.COMMANDS,
    **distill.COMMANDS,
}
_USAGE_ERRORS = (InvalidArgumentError, NotFoundError, FailedPreconditionError)
_TOP_FLAGS = ("-h", "--help", "--version", "--debug")


def _debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser: every subcommand listed, and the flags of ``command`` (all commands' when ``None``)."""
    parser = Parser(prog="nessa", description="NeSSA: near-storage data selection.")
    parser.add_argument("--version", action="version", version=f"nessa {__version__}")
    _debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
        if command is None or command == name:
            cmd.add(p)
            _debug_flag(p)
        p.set_defaults(handler=cmd.run)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in _TOP_FLAGS:
            continue
        return arg if arg in COMMANDS else None
    return None


def _exit_status(exc: BaseException) -> int:
    return 2 if isinstance(exc, _USAGE_ERRORS) else 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nessa`` command line; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _command_of(argv)
    try:
        args = build_parser(name).parse_args(argv)
    except NessaError as exc:  # a failure while building a command's flags (e.g. a missing optional package)
        print(f"nessa {name or ''}: error: {_one_line(str(exc))}", file=sys.stderr)
        return _exit_status(exc)
    debug = bool(getattr(args, "debug", False))
    handler: Handler = args.handler
    prefix = f"nessa {args.command}: error:"
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output went away (`nessa methods | head`): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"{prefix} {_describe(exc)}", file=sys.stderr)
        return _exit_status(exc)


def _describe(exc: Exception) -> str:
    """One line for ``exc``; gRPC transport errors and OS errors get the fix, bugs a pointer to ``--debug``."""
    import grpc

    if isinstance(exc, NessaError):
        return _one_line(str(exc))
    if isinstance(exc, grpc.RpcError):
        from nessa.cli.connect import rpc_failure

        target = getattr(exc, "target", None) or "the target"
        return _one_line(str(rpc_failure(exc, str(target))))
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return _one_line(f"{exc.strerror or exc}{where}")
    return _one_line(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)")
