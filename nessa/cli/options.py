"""Command-line flags from config dataclasses, the parser every command uses, and shared value parsers.

:func:`add_config_flags` turns each field of a dataclass into a flag (``batch_size`` → ``--batch-size``) whose help
is the field's ``help`` metadata or its line in the class's ``Attributes:`` docstring, and whose default is the
field's, shown in the help but never restated: flags default to :data:`argparse.SUPPRESS`, so
:func:`given` returns only what the user typed and the dataclass fills in the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from nessa.errors import InvalidArgumentError

__all__ = [
    "Command",
    "Flag",
    "Parser",
    "UsageError",
    "add_config_flags",
    "attribute_docs",
    "byte_size",
    "given",
    "human_bytes",
    "option_pair",
    "shape",
]


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``nessa`` subcommand.

    Attributes:
        help: one line for ``nessa --help``.
        add: adds the command's flags to its parser (called only when the command runs or shows its help).
        run: runs it; returns the exit status.
        description: the paragraph of ``nessa COMMAND --help`` (default: ``help``).
    """

    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


class UsageError(InvalidArgumentError):
    """The command line cannot work as typed (exit status 2); the message says what to change."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, naming the command and pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with status 2."""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one dataclass field appears on the command line, where the default derivation does not fit.

    Attributes:
        names: option strings (default ``--field-name``).
        help: help text (default: the field's ``help`` metadata or docstring line).
        parse: value parser (default: from the field's annotation).
        choices: allowed values.
        metavar: the value's name in the usage line.
        action: an argparse action (e.g. ``"append"``); bool fields get ``--x/--no-x`` by default.
        hidden: the field gets no flag.
    """

    names: tuple[str, ...] = ()
    help: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: Iterable[Any] | None = None
    metavar: str | None = None
    action: str | type[argparse.Action] | None = None
    hidden: bool = False


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name → its description in the ``Attributes:`` section of ``cls``'s Google-style docstring."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    in_section = False
    current: str | None = None
    for line in doc.splitlines():
        if not line.strip():
            current = None if not in_section else current
            continue
        if not line.startswith(" "):
            in_section = line.strip() == "Attributes:"
            current = None
            continue
        if not in_section:
            continue
        m = re.match(r"^ {4}(\w+): (.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current is not None and line.startswith(" " * 8):
            out[current] += " " + line.strip()
    return {name: _plain(text) for name, text in out.items()}


def _plain(text: str) -> str:
    """ReStructuredText markup out (``x`` → x, :class:`~a.B` → B), no final period."""
    text = re.sub(r":\w+:`~?([^`]*?)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    return text.rstrip(".")


def _unwrap_optional(tp: Any) -> Any:
    """``X | None`` → ``X``; other types unchanged."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _parser_for(tp: Any, name: str) -> Callable[[str], Any] | None:
    tp = _unwrap_optional(tp)
    if name.endswith("_bytes") and tp is int:
        return byte_size
    if tp in (int, float, str, Path):
        return typing.cast(Callable[[str], Any], tp)
    return None


def _default_text(value: Any, name: str) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if name.endswith("_bytes") and isinstance(value, int):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value and value % size == 0:
                return f"{value // size} {unit}"
        return str(value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value == "":
        return '""'
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    flags: Mapping[str, Flag] | None = None,
    *,
    defaults: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of dataclass ``cls`` to ``parser``; see the module docstring.

    Args:
        parser: where to add them.
        cls: the config dataclass.
        flags: per-field changes (names, type, choices, ``hidden`` ...).
        defaults: per-field text shown as the default instead of the field's (e.g. one that depends on a mode).

    Fields without a default are required. A bool field defaulting to True gets ``--x/--no-x``.
    """
    flags = flags or {}
    defaults = defaults or {}
    docs = attribute_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        spec = flags.get(f.name, Flag())
        if spec.hidden or not f.init:
            continue
        names = spec.names or (f"--{f.name.replace('_', '-')}",)
        text = spec.help or f.metadata.get("help") or docs.get(f.name) or f.name.replace("_", " ")
        text = text.replace("%", "%%")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name in defaults:
            text += f" (default: {defaults[f.name]})"
        elif not required and f.default is not dataclasses.MISSING:
            text += f" (default: {_default_text(f.default, f.name)})"
        tp = hints.get(f.name)
        action: str | type[argparse.Action] | None = spec.action
        if action is None and tp is bool:
            action = argparse.BooleanOptionalAction
        if action is not None:
            kwargs["action"] = action
        if action in (None, "append"):
            value_type = spec.parse or _parser_for(tp, f.name)
            if value_type is not None:
                kwargs["type"] = value_type
            if spec.choices is not None:
                kwargs["choices"] = tuple(spec.choices)
            if spec.metavar is not None:
                kwargs["metavar"] = spec.metavar
        if required:
            kwargs["required"] = True
        parser.add_argument(*names, help=text, **kwargs)


def given(args: argparse.Namespace, cls: type, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``cls`` the user gave on the command line (flags of :func:`add_config_flags`)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    return {k: v for k, v in vars(args).items() if k in names}


def option_pair(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value); VALUE is read as JSON when it parses (numbers, true/false), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE; write e.g. --option optimizer=stochastic")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def shape(text: str) -> tuple[int, ...]:
    """``3,32,32`` or ``3x32x32`` → ``(3, 32, 32)``."""
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write it like 3,32,32") from None
    if not dims or any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write it like 3,32,32")
    return dims


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """``1048576``, ``512MiB``, ``4M``, ``1.5GiB`` → bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write bytes or e.g. 512MiB, 4GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
