"""Selector options as typed, frozen dataclasses: names, defaults, types and validation in one place.

Every selector declares ``Options``, a frozen dataclass deriving from :class:`Options` whose fields are made with
:func:`option` (the default plus a :class:`Spec`: the kind of value, its choices or range, whether ``None`` is
allowed, a one-line help). :meth:`Options.parse` builds one from keyword options and raises
:class:`~nessa.errors.InvalidArgumentError` naming the option and what it accepts; cross-field rules go in
:meth:`Options.validate`. The registry exposes the dataclass (:func:`nessa.selection.registry.get` ``.Options``) and
a JSON-able description of it (:meth:`Options.spec`, in :func:`nessa.selection.available`), so the CLI, the daemon
and the docs read one definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from nessa.accel.reference.selection import is_int, is_real
from nessa.errors import InvalidArgumentError

__all__ = ["INT_LIMIT", "KINDS", "Options", "Spec", "option"]

#: The kinds of option value: a string from ``choices``; true/false; an int; a finite number; a budget-like size
#: (an int count >= 1 or a float fraction in (0, 1]); a non-empty matrix (list of lists of numbers); anything.
KINDS = ("choice", "bool", "int", "number", "size", "matrix", "any")

_O = TypeVar("_O", bound="Options")

#: The bound of every ``int`` option without a ``high`` of its own (counts and sizes past it overflow the kernels'
#: 32-bit indices, or numpy's int64 once multiplied): ``kind="int"`` values must lie in [-INT_LIMIT, INT_LIMIT].
INT_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Spec:
    """What one option accepts (the metadata of an :func:`option` field).

    Attributes:
        kind: one of :data:`KINDS`.
        choices: the allowed strings (``kind="choice"``).
        low: the smallest allowed value (``int``/``number``), or ``None``.
        high: the largest allowed value, or ``None``.
        open_low: ``low`` itself is excluded.
        open_high: ``high`` itself is excluded.
        nullable: ``None`` is allowed.
        help: one line on what the option does.
    """

    kind: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    help: str = ""

    def describe(self) -> str:
        """What the option accepts, in words (for error messages)."""
        if self.kind == "choice":
            text = f"one of {list(self.choices)}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "size":
            text = "a count >= 1 (int) or a fraction in (0, 1] (float)"
        elif self.kind == "matrix":
            text = "a non-empty K × d list of lists of finite numbers"
        elif self.kind == "any":
            text = "any value"
        else:
            what = "an int" if self.kind == "int" else "a finite number"
            if self.low is not None and self.high is not None:
                lo, hi = ("(" if self.open_low else "["), (")" if self.open_high else "]")
                text = f"{what} in {lo}{_num(self.low)}, {_num(self.high)}{hi}"
            elif self.low is not None and self.kind == "int":
                text = f"{what} in {'(' if self.open_low else '['}{_num(self.low)}, {INT_LIMIT}]"
            elif self.low is not None:
                text = f"{what} {'>' if self.open_low else '>='} {_num(self.low)}"
            elif self.high is not None:
                text = f"{what} {'<' if self.open_high else '<='} {_num(self.high)}"
            else:
                text = what
        return text + (" or None" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is valid for this option."""
        if value is None:
            return self.nullable
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "any":
            return True
        if self.kind == "size":
            if is_int(value):
                return int(value) >= 1
            return is_real(value) and 0.0 < float(value) <= 1.0
        if self.kind == "matrix":
            return _is_matrix(value)
        ok = is_int(value) if self.kind == "int" else is_real(value)
        if not ok or (self.kind == "int" and self.high is None and abs(int(value)) > INT_LIMIT):
            return False
        try:
            v = float(value)
        except OverflowError:  # an int too large for a float
            return False
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (self.open_low and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.open_high and v == self.high)))

    def as_json(self) -> dict[str, Any]:
        """A JSON-able description (kind, choices, range, nullable, help)."""
        out: dict[str, Any] = {"kind": self.kind, "nullable": self.nullable, "accepts": self.describe()}
        if self.choices:
            out["choices"] = list(self.choices)
        if self.low is not None:
            out["low"] = self.low
        if self.high is not None:
            out["high"] = self.high
        if self.help:
            out["help"] = self.help
        return out


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _is_matrix(value: Any) -> bool:
    try:
        import numpy as np

        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return bool(arr.ndim == 2 and arr.shape[0] > 0 and arr.shape[1] > 0 and np.all(np.isfinite(arr)))


def option(
    default: Any,
    kind: str,
    *,
    choices: tuple[str, ...] = (),
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    nullable: bool = False,
    help: str = "",
) -> Any:
    """A dataclass field for an :class:`Options` subclass: its default and a :class:`Spec` of what it accepts."""
    if kind not in KINDS:
        raise ValueError(f"unknown option kind {kind!r}; use one of {list(KINDS)}")
    spec = Spec(kind, tuple(choices), low, high, open_low, open_high, nullable or default is None, help)
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class Options:
    """Base of every selector's options (a frozen dataclass; no fields here).

    Subclasses declare fields with :func:`option` and may override :meth:`validate` for rules that involve several
    options. The selector's name is passed to :meth:`parse` so that every message names the method.
    """

    def __post_init__(self) -> None:
        self._check("options")

    def _check(self, owner: str) -> None:
        for f in fields(self):
            spec = f.metadata.get("spec")
            value = getattr(self, f.name)
            if isinstance(spec, Spec) and not spec.accepts(value):
                raise InvalidArgumentError(f"{owner}: option {f.name}={value!r} must be {spec.describe()}")
        self.validate(owner)

    def validate(self, owner: str) -> None:
        """Rules that involve several options (raise :class:`InvalidArgumentError` naming ``owner``)."""
        del owner

    @classmethod
    def parse(cls: type[_O], owner: str, values: Mapping[str, Any] | None = None) -> _O:
        """Build the options from a mapping of name → value (missing names take their defaults).

        Raises:
            InvalidArgumentError: an unknown name (the message lists the known ones) or an invalid value.
        """
        given = dict(values or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise InvalidArgumentError(f"{owner}: unknown option(s) {unknown}; known options: {names}")
        try:
            obj = object.__new__(cls)
            for f in fields(cls):
                value = given.get(f.name, f.default if f.default is not MISSING else None)
                object.__setattr__(obj, f.name, value)
        except TypeError as exc:  # pragma: no cover - every field has a default
            raise InvalidArgumentError(f"{owner}: {exc}") from exc
        obj._check(owner)
        return obj

    def as_dict(self) -> dict[str, Any]:
        """Name → value, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self: _O, owner: str, **changes: Any) -> _O:
        """A copy with some options changed (validated like :meth:`parse`)."""
        return type(self).parse(owner, {**self.as_dict(), **changes})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Name → default value, in declaration order."""
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def spec(cls) -> dict[str, dict[str, Any]]:
        """Name → JSON-able description: ``default``, ``kind``, ``accepts`` (in words), choices/range, ``help``."""
        out: dict[str, dict[str, Any]] = {}
        for f in fields(cls):
            spec = f.metadata.get("spec")
            entry = {"default": f.default}
            if isinstance(spec, Spec):
                entry.update(spec.as_json())
            out[f.name] = entry
        return out
