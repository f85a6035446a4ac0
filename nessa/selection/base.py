"""The one interface every selector shares: inputs, budget, seed in; a weighted :class:`Subset` out.

A selector declares its options as a typed frozen dataclass (``Options``) and which per-sample inputs it needs
with given options (``inputs_for``; ``requires`` is that for the defaults). It is built by name through
:func:`nessa.selection.create` and run with ``selector.select(inputs, budget, seed)``. Selectors never see gRPC,
files or torch: numpy arrays only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.selection.options import Options

__all__ = ["Budget", "SelectionInputs", "Selector", "Subset"]

#: A budget is a fraction of the candidates (float in (0, 1]) or a number of samples (int >= 1).
Budget = float | int

_INPUT_NAMES = ("labels", "gradients", "losses", "embeddings", "caption_embeddings", "groups")


@dataclass(frozen=True)
class SelectionInputs:
    """Per-sample arrays a selector may need; each optional, all of the same length ``n``.

    Attributes:
        labels: int64 class label per sample, shape (n,).
        gradients: float32 per-sample gradient estimates, shape (n, g) (e.g. ``softmax(z) - onehot(y)``).
        losses: float32 per-sample loss, shape (n,).
        embeddings: float32 per-sample embeddings, shape (n, d) (penultimate features, image embeddings).
        caption_embeddings: float32 per-sample caption (text) embeddings, shape (n, d') (ClipCov).
        groups: int64 group id per sample, shape (n,) (latent classes, pools); method-specific meaning.
    """

    labels: np.ndarray | None = None
    gradients: np.ndarray | None = None
    losses: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    caption_embeddings: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        n: int | None = None
        first = ""
        for name in _INPUT_NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            try:
                arr = np.asarray(value)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(
                    f"{name} could not be read as an array ({exc}); pass a numpy array with one row per sample"
                ) from exc
            if arr.dtype.kind not in "biuf":
                raise InvalidArgumentError(
                    f"{name} must be numeric (bool, int or float); got dtype {arr.dtype}: convert it first"
                )
            if name in ("labels", "groups"):
                if arr.ndim != 1:
                    raise InvalidArgumentError(f"{name} must be 1-D (one per sample); got shape {arr.shape}")
                if arr.size and not np.issubdtype(arr.dtype, np.integer):
                    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                        raise InvalidArgumentError(f"{name} must be integers; got dtype {arr.dtype}")
                arr = arr.astype(np.int64, copy=False)
            else:
                arr = arr.astype(np.float32, copy=False)
                want_ndim = 1 if name == "losses" else 2
                if arr.ndim != want_ndim:
                    raise InvalidArgumentError(
                        f"{name} must be {want_ndim}-D ({'n' if want_ndim == 1 else 'n, dim'}); got {arr.shape}"
                    )
                if not np.all(np.isfinite(arr)):
                    bad = int(np.count_nonzero(~np.isfinite(arr)))
                    raise InvalidArgumentError(
                        f"{name} holds {bad} NaN/Inf values; fix the features (e.g. the proxy's outputs) first"
                    )
            object.__setattr__(self, name, arr)
            if n is None:
                n, first = len(arr), name
            elif len(arr) != n:
                raise InvalidArgumentError(
                    f"length mismatch: {first} has {n} samples but {name} has {len(arr)}; give one row per sample"
                )

    def __len__(self) -> int:
        for name in _INPUT_NAMES:
            value = getattr(self, name)
            if value is not None:
                return len(value)
        return 0

    def present(self) -> tuple[str, ...]:
        """Names of the inputs that are set."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def require(self, *names: str) -> None:
        """Raise :class:`InvalidArgumentError` unless every named input is set."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise InvalidArgumentError(f"this method needs inputs {missing}; got only {list(self.present())}")


@dataclass
class Subset:
    """A weighted subset chosen by a selector.

    Attributes:
        indices: int64 positions into the candidate arrays, in the method's order (e.g. greedy order),
            each unique.
        weights: float32, one per index: cluster sizes normalized to mean 1 where the method defines weights,
            else ones.
        objective: the method's objective value for the subset (``nan`` if it has none).
        class_counts: label → number selected (empty when no labels were given).
        seconds: wall seconds spent in ``select``.
        method: the selector's registry name.
        options: the options used (defaults filled in).
        extras: method-specific outputs (e.g. ``augment``'s indices to augment); plain JSON-able values.
    """

    indices: np.ndarray
    weights: np.ndarray
    objective: float = float("nan")
    class_counts: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    method: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)


class _Requires:
    """``Selector.requires``: the inputs the selector needs with its default options (``inputs_for(Options())``)."""

    def __get__(self, obj: object, owner: type[Selector]) -> tuple[str, ...]:
        return owner.inputs_for(owner.Options())


class _Defaults:
    """``Selector.options``: option name → default, read from the ``Options`` dataclass."""

    def __get__(self, obj: object, owner: type[Selector]) -> Mapping[str, Any]:
        return MappingProxyType(owner.Options.defaults())


class Selector:
    """Base class of every selector.

    Subclasses set ``name``, ``description`` and ``Options`` (a frozen dataclass of :mod:`nessa.selection.options`:
    every option's name, default, type and validation), override :meth:`inputs_for` when the inputs depend on the
    options, and implement :meth:`_select`. Options are parsed and validated once at construction into ``opts``
    (the dataclass) and ``config`` (the same as a dict). ``requires`` (the inputs with the default options) and
    ``options`` (name → default) are derived from those, so they cannot disagree with :meth:`required_inputs`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    requires: ClassVar[_Requires] = _Requires()
    options: ClassVar[_Defaults] = _Defaults()

    def __init__(self, **options: Any) -> None:
        self.opts = self.Options.parse(self.name or type(self).__name__, options)
        self.config: dict[str, Any] = self.opts.as_dict()

    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """The :class:`SelectionInputs` fields this method needs with the options ``opts`` (its ``Options``)."""
        del opts
        return ()

    def select(self, inputs: SelectionInputs, budget: Budget, seed: int = 0) -> Subset:
        """Choose a weighted subset of ``inputs`` of the given budget; deterministic for a given seed."""
        if not isinstance(inputs, SelectionInputs):
            raise InvalidArgumentError(
                f"{self.name}: inputs must be a nessa.selection.SelectionInputs; got {type(inputs).__name__}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
            raise InvalidArgumentError(f"{self.name}: seed must be an int >= 0; got {seed!r}")
        seed = int(seed)
        inputs.require(*self.required_inputs())
        n = len(inputs)
        if n == 0:
            raise InvalidArgumentError(f"{self.name}: no candidates to select from")
        start = time.perf_counter()
        subset = self._select(inputs, budget, seed)
        subset.seconds = time.perf_counter() - start
        subset.method = self.name
        subset.options = dict(self.config)
        subset.indices = np.asarray(subset.indices, dtype=np.int64)
        subset.weights = np.asarray(subset.weights, dtype=np.float32)
        if inputs.labels is not None and not subset.class_counts:
            labels, counts = np.unique(inputs.labels[subset.indices], return_counts=True)
            subset.class_counts = {int(k): int(v) for k, v in zip(labels, counts, strict=True)}
        return subset

    def required_inputs(self) -> tuple[str, ...]:
        """The inputs this instance needs with its options (:meth:`inputs_for` of its ``opts``)."""
        return tuple(type(self).inputs_for(self.opts))

    def state_dict(self) -> dict[str, Any]:
        """The state this instance carries from one ``select`` call to the next (JSON-able; ``{}``: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of an instance with the same options."""

    def feature_rows(self, labels: np.ndarray, budget: Budget, seed: int = 0) -> np.ndarray | None:
        """Candidate positions whose per-sample features :meth:`select` will read, or ``None`` for all of them.

        With these labels, budget and seed, :meth:`select` reads ``gradients``, ``losses``, ``embeddings`` and
        ``caption_embeddings`` only at these rows (sorted, unique); the values of the other rows do not change
        its result (they must still be finite). A caller that computes features per sample (the storage daemon's
        proxy pass) computes only these rows. Methods that look at every candidate return ``None`` (the default);
        CREST, which draws random pools from the labels alone, returns the pools.
        """
        del labels, budget, seed
        return None

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        raise NotImplementedError
