"""Data-efficient augmentation via Jacobian coresets (Liu & Mirzasoleiman, NeurIPS 2022).

Strong augmentation (AutoAugment, CutOut, ...) is expensive; augmenting only a weighted coreset whose
augmentations reproduce the full augmented data's Jacobian–residual alignment captures most of its benefit.

* **Paper.** The surrogate is CRAIG's facility location on per-example vectors Jᵀr_i ≈ the last-layer gradient
  p_i − y_i, per class; γ_j are the cluster sizes and each of the r augmentations of a coreset element j gets
  weight γ_j/r. The epoch trains on a main set (full data, the coreset, or a random subset) plus the augmented
  copies of the coreset.
* **Code** (``data-efficient-augmentation``). submodlib's FL with the exp(−‖·‖/C) kernel, lazy greedy, per class
  with equal budgets; weights normalized to mean 1; r = 1 strongly augmented copy per coreset element; the copies
  are *unweighted* unless ``--enable_coreset_augment_weights``; ``--use_linear`` uses the penultimate-layer
  gradient (p − y) ⊗ h; if selection raises, the code silently falls back to a random subset.
* **Ours.** CRAIG (the registered ``craig`` selector: per class, equal budgets, lazy greedy) with the exp kernel
  and submodlib's weight rule on ``gradients`` (or, with ``gradient="penultimate"``, on the outer product of
  ``gradients`` and ``embeddings``, C·d dims) picks the coreset S of the budget's size. ``Subset.indices`` and
  ``weights`` are the epoch's *main set*: ``main_set="coreset"`` (default; the paper's "train only on augmented
  subsets", which moves the fewest bytes) = S with CRAIG's mean-1 weights w_j; ``"full"`` = every candidate with
  weight 1; ``"random"`` = a seeded uniform random subset of ``main_size`` with weight 1.
  ``extras["augment_indices"]`` lists S (the examples to strongly augment, r copies each) and
  ``extras["augment_weights"]`` the weight of each copy: with ``augment_weights="gamma"`` (default, the paper)
  γ_j/r rescaled so the r copies of all of S weigh as much as the main set (for ``"full"`` that is exactly γ_j/r
  with γ the cluster sizes, since they sum to N; for ``"coreset"`` it is w_j/r); with ``"ones"`` (the code's
  default) 1. No fallback: a failing selection raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import count_from_budget
from nessa.selection.facility_location import OPTIMIZERS
from nessa.selection.options import Options, option
from nessa.selection.registry import create, register

__all__ = ["Augment", "AugmentOptions", "penultimate_gradients"]

_MAIN_SETS = ("coreset", "full", "random")


def penultimate_gradients(gradients: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """The last linear layer's per-example weight gradient (p − y) ⊗ h, flattened to (n, C·d).

    This is the augmentation code's ``--use_linear`` proxy: ``repeat_interleave(p − y, d) * tile(h, C)``.

    Args:
        gradients: float32 (n, C), the logit gradients p − y.
        embeddings: float32 (n, d), the penultimate features h.

    Returns:
        float32 (n, C·d), row i = vec(g_i h_iᵀ) with the class index varying slowest.
    """
    g = np.asarray(gradients, dtype=np.float32)
    h = np.asarray(embeddings, dtype=np.float32)
    if g.ndim != 2 or h.ndim != 2 or len(g) != len(h):
        raise InvalidArgumentError(
            f"penultimate gradients need gradients (n, C) and embeddings (n, d) with the same n; got {g.shape}, "
            f"{h.shape}"
        )
    return (g[:, :, None] * h[:, None, :]).reshape(len(g), -1)


@dataclass(frozen=True)
class AugmentOptions(Options):
    """The augmentation coresets' options (see :class:`Augment`)."""

    main_set: str = option("coreset", "choice", choices=_MAIN_SETS, help="what Subset.indices holds")
    main_size: int | float | None = option(None, "size", help="size of the random main set (main_set='random')")
    num_augmentations: int = option(1, "int", low=1, help="r, strongly augmented copies per coreset element")
    augment_weights: str = option("gamma", "choice", choices=("gamma", "ones"), help="weight of each copy")
    gradient: str = option(
        "last_layer", "choice", choices=("last_layer", "penultimate"), help="p − y, or (p − y) ⊗ h (--use_linear)"
    )
    optimizer: str = option("lazy", "choice", choices=OPTIMIZERS, help="CRAIG's greedy")
    backend: str = option("opencl", "choice", choices=("opencl", "numpy"), help="where distances are computed")

    def validate(self, owner: str) -> None:
        """``main_size`` is given exactly when ``main_set='random'``."""
        if (self.main_set == "random") != (self.main_size is not None):
            raise InvalidArgumentError(
                f"{owner}: main_size is the size of the random main set: give it exactly when main_set='random' "
                f"(got main_set={self.main_set!r}, main_size={self.main_size!r})"
            )


@register
class Augment(Selector):
    """Coresets to strongly augment (Liu & Mirzasoleiman 2022): CRAIG on the gradient proxy, plus a main set.

    Inputs: ``labels``, ``gradients`` (p − y), and ``embeddings`` for ``gradient="penultimate"``.

    Options:
        main_set: what ``Subset.indices`` holds: ``"coreset"`` (the coreset, CRAIG weights), ``"full"`` (all
            candidates, weight 1) or ``"random"`` (a random subset of ``main_size``, weight 1).
        main_size: size of the random main set (count or fraction); only with ``main_set="random"``.
        num_augmentations: r, strongly augmented copies per coreset element (code: 1).
        augment_weights: ``"gamma"`` (paper: γ_j/r, scaled to the main set's total weight) or ``"ones"`` (code).
        gradient: ``"last_layer"`` (p − y, default) or ``"penultimate"`` ((p − y) ⊗ h; code ``--use_linear``).
        optimizer: CRAIG's greedy: ``"lazy"`` (code), ``"naive"`` or ``"stochastic"``.
        backend: ``"opencl"`` (default) or ``"numpy"``.
    """

    name: ClassVar[str] = "augment"
    description: ClassVar[str] = (
        "Data-efficient augmentation (NeurIPS 2022): a CRAIG coreset on p-y to strongly augment, with weights "
        "gamma/r per augmented copy, plus the epoch's main set (coreset, full or random)"
    )
    Options: ClassVar[type[Options]] = AugmentOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        cfg = self.config
        # Validates optimizer (and the rest of CRAIG's options) now rather than at the first selection.
        self._craig = create(
            "craig", similarity="exp", weight_rule="submodlib", optimizer=cfg["optimizer"], backend=cfg["backend"]
        )

    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """``labels`` and ``gradients``, plus ``embeddings`` with ``gradient="penultimate"``."""
        if opts.gradient == "penultimate":
            return ("labels", "gradients", "embeddings")
        return ("labels", "gradients")

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        cfg = self.config
        if inputs.labels is None or inputs.gradients is None:  # guaranteed by ``requires``
            raise InvalidArgumentError("augment needs labels and gradients")
        n = len(inputs)
        k = count_from_budget(n, budget)
        features = inputs.gradients
        if cfg["gradient"] == "penultimate":
            if inputs.embeddings is None:
                raise InvalidArgumentError(
                    "augment: gradient='penultimate' needs embeddings (the penultimate features h); pass them or "
                    "use gradient='last_layer'"
                )
            features = penultimate_gradients(inputs.gradients, inputs.embeddings)
        coreset = self._craig.select(SelectionInputs(labels=inputs.labels, gradients=features), k, seed)
        core_idx = np.asarray(coreset.indices, dtype=np.int64)
        core_w = np.asarray(coreset.weights, dtype=np.float64)  # γ_j·|S|/Σγ (mean 1)
        r = int(cfg["num_augmentations"])

        if cfg["main_set"] == "coreset":
            main_idx, main_w = core_idx, core_w
        elif cfg["main_set"] == "full":
            main_idx, main_w = np.arange(n, dtype=np.int64), np.ones(n, dtype=np.float64)
        else:
            size = count_from_budget(n, cfg["main_size"])
            rng = np.random.default_rng(seed)
            main_idx = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
            main_w = np.ones(size, dtype=np.float64)

        if cfg["augment_weights"] == "gamma":
            # γ_j / Σγ = w_j / |S|; the r copies of all of S together weigh as much as the main set.
            aug_w = core_w / len(core_w) * main_w.sum() / r
        else:
            aug_w = np.ones(len(core_idx), dtype=np.float64)
        return Subset(
            indices=main_idx,
            weights=main_w.astype(np.float32),
            objective=coreset.objective,
            extras={
                "augment_indices": core_idx.tolist(),
                "augment_weights": aug_w.astype(np.float32).tolist(),
                "num_augmentations": r,
                "main_set": cfg["main_set"],
                "coreset_weights": core_w.astype(np.float32).tolist(),
            },
        )
