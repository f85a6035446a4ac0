"""Selectors by name: ``register`` a :class:`~nessa.selection.base.Selector` subclass, ``create`` one by name.

Method modules are found automatically: the first lookup imports every module of the ``nessa.selection``
package (``pkgutil.iter_modules``), so a new ``nessa/selection/<method>.py`` whose class is decorated with
:func:`register` needs no edit anywhere else. A module that fails to import is an error naming the module (never
silently skipped: a missing method would otherwise look like a typo in its name).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Mapping
from typing import Any, TypeVar

from nessa.errors import InvalidArgumentError
from nessa.selection.base import Selector
from nessa.selection.options import Options

__all__ = ["available", "create", "get", "options_class", "register", "required_inputs"]

_S = TypeVar("_S", bound=type[Selector])

_REGISTRY: dict[str, type[Selector]] = {}
_discovered = False
_lock = threading.RLock()


def register(cls: _S) -> _S:
    """Class decorator: make a :class:`Selector` subclass available under its ``name``.

    Raises:
        InvalidArgumentError: the class is not a Selector, has no name, or the name is taken by another class.
    """
    if not isinstance(cls, type) or not issubclass(cls, Selector):
        raise InvalidArgumentError(f"register expects a Selector subclass; got {cls!r}")
    name = cls.name
    if not name or not isinstance(name, str):
        raise InvalidArgumentError(f"{cls.__qualname__} must set a non-empty class attribute `name` to be registered")
    with _lock:
        other = _REGISTRY.get(name)
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise InvalidArgumentError(
                f"selector name {name!r} is already registered by {other.__module__}.{other.__qualname__}; "
                f"rename {cls.__module__}.{cls.__qualname__}"
            )
        _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        package = importlib.import_module("nessa.selection")
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_"):
                continue
            module = f"{package.__name__}.{info.name}"
            try:
                importlib.import_module(module)
            except Exception as exc:
                raise ImportError(f"selector module {module} failed to import: {exc!r}; fix or remove it") from exc
        _discovered = True


def get(name: str) -> type[Selector]:
    """The selector class registered under ``name``.

    Raises:
        InvalidArgumentError: no selector has that name (the message lists the available ones).
    """
    _discover()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise InvalidArgumentError(f"unknown selection method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return cls


def create(name: str, **options: Any) -> Selector:
    """Build the selector ``name`` with ``options`` (unknown names or options are InvalidArgumentError)."""
    return get(name)(**options)


def required_inputs(method: str, options: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The :class:`~nessa.selection.base.SelectionInputs` fields ``method`` needs with ``options``.

    The one rule the trainer (which pushes a proxy only when needed) and the daemon (which rejects, before any work,
    a method whose inputs it cannot compute) both call; it equals ``create(method, **options).required_inputs()``
    without building the selector.

    Raises:
        InvalidArgumentError: an unknown method, an unknown option, or an invalid option value.
    """
    cls = get(method)
    return tuple(cls.inputs_for(cls.Options.parse(method, options)))


def options_class(method: str) -> type[Options]:
    """The typed frozen dataclass of ``method``'s options (its fields: names, defaults, types and validation)."""
    return get(method).Options


def available() -> dict[str, dict[str, Any]]:
    """Every registered selector: name → {"options", "option_specs", "requires", "description"}.

    ``options`` maps each option to its default; ``option_specs`` describes each (default, kind, what it accepts,
    choices or range, help; JSON-able, from the method's ``Options`` dataclass); ``requires`` lists the
    :class:`SelectionInputs` fields the selector needs *with its default options* (some options add inputs, e.g.
    ``drop_learned`` needs ``losses``: :func:`required_inputs` tells for given options).
    """
    _discover()
    return {
        name: {
            "options": cls.Options.defaults(),
            "option_specs": cls.Options.spec(),
            "requires": list(cls.requires),
            "description": cls.description,
        }
        for name, cls in sorted(_REGISTRY.items())
    }
