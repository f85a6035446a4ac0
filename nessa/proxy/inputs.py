"""Which selector inputs a storage daemon can provide, and how a proxy's outputs become them.

One rule, read by the daemon (before it does any work) and by the trainer (before it exports and pushes a proxy):

* ``labels`` are stored with the dataset;
* ``gradients`` (last-layer gradient ``softmax(z) − onehot(y)``), ``losses`` and ``embeddings`` are derived by
  running the model proxy over the samples;
* anything else a selector may take (``groups``, ``caption_embeddings``, ...) the daemon cannot compute: a method
  that needs it is refused with :class:`~nessa.errors.InvalidArgumentError` naming the input.

This module imports neither torch nor an engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nessa.errors import InvalidArgumentError

__all__ = ["FROM_PROXY", "STORED", "InputPlan", "plan_inputs", "selector_input"]

#: Inputs the daemon has without a proxy.
STORED = ("labels",)
#: Inputs derived from the proxy's outputs.
FROM_PROXY = ("gradients", "losses", "embeddings")


@dataclass(frozen=True)
class InputPlan:
    """Where each input a selector needs comes from.

    Attributes:
        stored: inputs read from the dataset.
        from_proxy: inputs computed by running the proxy (empty: the method needs no proxy).
    """

    stored: tuple[str, ...]
    from_proxy: tuple[str, ...]

    @property
    def needs_proxy(self) -> bool:
        """Whether a proxy must be pushed before selecting."""
        return bool(self.from_proxy)


def plan_inputs(method: str, required: Iterable[str]) -> InputPlan:
    """Split the inputs ``method`` requires by source.

    Raises:
        InvalidArgumentError: the method needs an input a storage daemon cannot compute.
    """
    names = tuple(dict.fromkeys(required))
    unsupported = [n for n in names if n not in STORED and n not in FROM_PROXY]
    if unsupported:
        raise InvalidArgumentError(
            f"method {method!r} needs {', '.join(unsupported)}, which a storage daemon cannot compute (it has "
            f"{', '.join(STORED)} and derives {', '.join(FROM_PROXY)} from the proxy); choose another method or "
            "options that do not need them, or run the selector as a library on your own arrays"
        )
    return InputPlan(
        stored=tuple(n for n in names if n in STORED), from_proxy=tuple(n for n in names if n in FROM_PROXY)
    )


def selector_input(outputs: Any, name: str) -> np.ndarray:
    """The selector input ``name`` (one of :data:`FROM_PROXY`) from a proxy engine's outputs."""
    if name == "gradients":
        return np.asarray(outputs.grad_embedding)
    if name == "losses":
        return np.asarray(outputs.loss)
    if name == "embeddings":
        return np.asarray(outputs.embedding)
    raise InvalidArgumentError(f"a proxy does not derive {name!r}; it derives {', '.join(FROM_PROXY)}")
