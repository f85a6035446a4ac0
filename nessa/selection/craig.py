"""CRAIG: Coresets for Accelerating Incremental Gradient descent (Mirzasoleiman, Bilmes, Leskovec, ICML 2020).

* **Paper.** Pick the weighted subset whose weighted gradient sum best approximates the full gradient; bounded by
  a k-medoids cost on per-example gradient distances, i.e. a facility location F(S) = Σ_i max_{j∈S} (M − d_ij),
  solved per class with greedy; the weight γ_j of a pick is its cluster size (the number of examples whose nearest
  pick it is). Deep nets use the last-layer gradient proxy g = softmax(z) − onehot(y).
* **Code** (``baharanm/craig``). Per class, a dense Euclidean block with s = max(d) − d; lazy greedy (or the SMTK
  binary, or stochastic greedy with ``--st_grd``); ``equal_num=True`` budgets ceil(k/C) per class; classes concatenated
  class by class (round-robin only for ``equal_num=False``); weights normalized to mean 1 over the subset.
* **Ours.** The same on our facility-location engine (:mod:`nessa.selection.facility_location`: the similarity
  block on the OpenCL device, lazy greedy that returns exactly the naive order, stochastic greedy, GreeDi above
  ``block_size`` per class). Options: ``features`` (``gradients`` or ``embeddings``), ``similarity`` (CRAIG's
  ``max_minus_dist`` by default, or submodlib's ``exp``, or ``cosine``), the budget rule
  (:mod:`nessa.selection.budget`; ``equal`` hands small classes' deficits to the others correctly), and
  ``weight_rule``. The subset is the classes' greedy orders interleaved in proportion to their budgets
  (:func:`~nessa.selection.facility_location.interleave`), weights are cluster sizes normalized to mean 1 over
  the whole subset, and the objective is the sum of the per-class F values. Where we depart from the code: ties go
  to the lowest index (its heap: the largest), its ``if not ndx`` bug (each class's first element always picked)
  is not copied, the equal rule's deficit is water-filled, and the merge interleaves (any prefix is balanced).

* **Neither** (NeSSA's own options, which follow neither the paper nor NeSSA's released code exactly; see
  ``docs/algorithms.md``): ``pool="partitions"`` (with ``partition_size`` or ``num_partitions``) selects one
  coreset per random class-balanced *disjoint* partition, all with the same features (NeSSA's code draws
  independent random partitions and takes one SGD step per partition's coreset, refreshing the proxy in between;
  that schedule is a training plan, not a selector), the budget split so the total is **exactly** the budget
  (:func:`nessa.selection.budget.partition_class_budgets`); the kernel stays CRAIG's ``max_minus_dist`` unless
  ``similarity="exp"`` (NeSSA's code uses submodlib's exp kernel and weight rule). ``unit_weights=True`` returns
  weight 1 for every pick (NeSSA's code trains unweighted). ``drop_learned`` (``learned_window``,
  ``learned_threshold``) drops the examples whose ``losses`` stayed below the threshold for the window
  (:class:`~nessa.selection.learned.LearnedExampleFilter`), except that a class (in a pool) keeps all its
  candidates when fewer than its budget would remain. The threshold is on CREST's scale (cross-entropy of the
  logits: 0.1 ⇔ p_y > 0.905); NeSSA's scripts' 1.4–4 are cross-entropy of softmax *probabilities* and mean
  something else (``docs/algorithms.md`` converts them). The filter is state of the selector *instance*;
  :meth:`Craig.state_dict` / :meth:`Craig.load_state_dict` save and restore it; a fresh instance per call keeps
  nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from nessa.accel.reference.selection import SIMILARITY_KINDS
from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import BUDGET_RULES, GLOBAL, class_budgets, count_from_budget, partition_class_budgets
from nessa.selection.facility_location import (
    OPTIMIZERS,
    WEIGHT_RULES,
    interleave_positions,
    maximize,
    mean_one_weights,
)
from nessa.selection.learned import LearnedExampleFilter
from nessa.selection.options import Options, option
from nessa.selection.pools import class_balanced_partitions
from nessa.selection.registry import register

__all__ = ["FL_OPTIONS", "CoresetOptions", "Craig", "CraigOptions", "FacilityLocationOptions", "derived_seed"]

_BACKENDS = ("opencl", "numpy")


@dataclass(frozen=True)
class FacilityLocationOptions(Options):
    """The facility-location engine's options (:func:`nessa.selection.facility_location.maximize`)."""

    similarity: str = option(
        "max_minus_dist", "choice", choices=SIMILARITY_KINDS, help="max_minus_dist (CRAIG), exp (submodlib), cosine"
    )
    similarity_param: float | None = option(
        None, "number", low=0.0, help="M of max_minus_dist (default: the block's max distance) or D of exp"
    )
    threshold: float = option(0.0, "number", help="similarities below it become 0")
    optimizer: str = option("lazy", "choice", choices=OPTIMIZERS, help="greedy variant (lazy = naive's order)")
    epsilon: float = option(0.1, "number", low=0.0, high=1.0, open_low=True, open_high=True, help="stochastic ε")
    backend: str = option("opencl", "choice", choices=_BACKENDS, help="where the similarities are computed")
    block_size: int = option(10_000, "int", low=2, help="largest ground set held as one block (GreeDi above)")
    weight_rule: str = option("craig", "choice", choices=WEIGHT_RULES, help="cluster-size rule of the weights")


#: The facility-location options CRAIG-like selectors share (name → default).
FL_OPTIONS: Mapping[str, Any] = MappingProxyType(FacilityLocationOptions.defaults())


@dataclass(frozen=True)
class CoresetOptions(FacilityLocationOptions):
    """CRAIG's and AdaCore's options: the engine's, the budget rule, partitions, learned-example dropping."""

    budget_rule: str = option(
        "equal", "choice", choices=BUDGET_RULES, help="global (one coreset over all), equal or proportional per class"
    )
    pool: str = option("class", "choice", choices=("class", "partitions"), help="one coreset per class or partition")
    partition_size: int | None = option(None, "int", low=1, help="largest partition (pool='partitions')")
    num_partitions: int | None = option(None, "int", low=1, help="number of partitions (pool='partitions')")
    drop_learned: bool = option(False, "bool", help="leave out examples whose loss stayed below the threshold")
    learned_window: int = option(5, "int", low=1, help="observations an example's loss must stay below it")
    learned_threshold: float = option(0.1, "number", help="the loss below which an observation counts as learned")
    unit_weights: bool = option(False, "bool", help="return weight 1 for every pick (train unweighted)")

    def validate(self, owner: str) -> None:
        """``pool='partitions'`` needs exactly one of partition_size / num_partitions; other pools neither."""
        if self.pool == "partitions":
            if (self.partition_size is None) == (self.num_partitions is None):
                raise InvalidArgumentError(
                    f"{owner}: pool='partitions' needs exactly one of partition_size and num_partitions"
                )
        elif self.partition_size is not None or self.num_partitions is not None:
            raise InvalidArgumentError(f"{owner}: partition_size/num_partitions only apply with pool='partitions'")


@dataclass(frozen=True)
class CraigOptions(CoresetOptions):
    """CRAIG's options (:class:`CoresetOptions` plus the features the distances are taken on)."""

    features: str = option(
        "gradients", "choice", choices=("gradients", "embeddings"), help="the input the distances are taken on"
    )


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. the call's seed, a pool, a class), stable across runs."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@register
class Craig(Selector):
    """Per-class facility location on gradient proxies (or embeddings), cluster-size weights (see the module doc).

    Options (:class:`CraigOptions`):
        features: ``"gradients"`` (default) or ``"embeddings"``: which input the distances are taken on.
        similarity, similarity_param, threshold, optimizer, epsilon, backend, block_size, weight_rule: the
            facility-location engine's options (:func:`nessa.selection.facility_location.maximize`).
        budget_rule: ``"equal"`` (ceil(k/C) per class), ``"proportional"`` (ceil(n_c·k/N)) or ``"global"`` (one
            coreset over all candidates, labels ignored).
        pool: ``"class"`` (one coreset per class over all candidates) or ``"partitions"`` (one per random
            class-balanced partition; give ``partition_size`` or ``num_partitions``; exactly the budget).
        drop_learned: drop learned examples (needs ``losses``); ``learned_window`` observations below
            ``learned_threshold``.
        unit_weights: every weight 1 (NeSSA's code trains unweighted); the cluster-size weights are in
            ``extras["cluster_weights"]``.
    """

    name: ClassVar[str] = "craig"
    description: ClassVar[str] = (
        "CRAIG: per-class facility location (lazy/stochastic greedy, GreeDi) on gradient proxies; weights are "
        "cluster sizes normalized to mean 1"
    )
    Options: ClassVar[type[Options]] = CraigOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        cfg = self.config
        self.learned: LearnedExampleFilter | None = (
            LearnedExampleFilter(int(cfg["learned_window"]), float(cfg["learned_threshold"]))
            if cfg["drop_learned"]
            else None
        )

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The state kept across calls (the learned-example filter), JSON-able."""
        return {"learned": self.learned.state_dict() if self.learned is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (raises InvalidArgumentError if it does not fit the options)."""
        saved = state.get("learned") if isinstance(state, Mapping) else None
        if (saved is None) != (self.learned is None):
            raise InvalidArgumentError(
                f"{self.name}: saved state {'has' if saved is not None else 'lacks'} a learned-example filter but "
                f"drop_learned={self.config['drop_learned']}; build the selector with the saved options"
            )
        if self.learned is not None and saved is not None:
            self.learned.load_state_dict(dict(saved))

    def reset(self) -> None:
        """Forget the state kept across calls."""
        if self.learned is not None:
            self.learned.reset()

    # ---------------------------------------------------------------------------------------------- select
    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """``labels`` (unless ``budget_rule='global'`` over one pool), the features, ``losses`` with drop_learned."""
        need: tuple[str, ...] = () if opts.budget_rule == GLOBAL and opts.pool == "class" else ("labels",)
        need += (str(getattr(opts, "features", "gradients")),)
        return need + (("losses",) if opts.drop_learned else ())

    def _features(self, inputs: SelectionInputs) -> np.ndarray:
        """The per-sample vectors the facility location runs on (AdaCore overrides this)."""
        feats = getattr(inputs, str(self.config["features"]))
        return np.asarray(feats, dtype=np.float32)

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        cfg = self.config
        feats = self._features(inputs)
        n = len(feats)
        labels = np.zeros(n, dtype=np.int64) if inputs.labels is None else np.asarray(inputs.labels, dtype=np.int64)
        # the labels the budget is split by: one group for the global rule
        groups = np.zeros(n, dtype=np.int64) if cfg["budget_rule"] == GLOBAL else labels
        rule = "equal" if cfg["budget_rule"] == GLOBAL else str(cfg["budget_rule"])
        k = count_from_budget(n, budget)
        learned = np.zeros(n, dtype=bool)
        if self.learned is not None:
            if inputs.losses is None:  # required_inputs() guarantees it; keeps the type checker informed
                raise InvalidArgumentError(f"{self.name}: drop_learned needs per-sample losses")
            self.learned.update(np.arange(n, dtype=np.int64), inputs.losses)
            learned = self.learned.learned_mask(n)
        if cfg["pool"] == "partitions":
            pools = class_balanced_partitions(
                labels, num_partitions=cfg["num_partitions"], partition_size=cfg["partition_size"], seed=seed
            )
            budgets = partition_class_budgets(groups, pools, k, rule=rule)
        else:
            pools = [np.arange(n, dtype=np.int64)]
            budgets = [class_budgets(groups, k, rule=rule)]
        fl_kwargs = {
            "similarity": cfg["similarity"],
            "similarity_param": cfg["similarity_param"],
            "threshold": float(cfg["threshold"]),
            "optimizer": cfg["optimizer"],
            "epsilon": float(cfg["epsilon"]),
            "backend": cfg["backend"],
            "block_size": int(cfg["block_size"]),
            "weight_rule": cfg["weight_rule"],
        }
        picked: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        objective = 0.0
        dropped = 0
        class_objective: dict[int, float] = {}
        for p, (pool, per_class) in enumerate(zip(pools, budgets, strict=True)):
            if not per_class:
                continue
            orders: list[np.ndarray] = []
            counts: list[np.ndarray] = []
            for c in sorted(per_class):
                kc = per_class[c]
                members = pool[groups[pool] == c]
                if kc == 0:
                    continue
                if learned.any():
                    keep = members[~learned[members]]
                    if keep.size >= kc:
                        dropped += members.size - keep.size
                        members = keep
                result = maximize(feats[members], min(kc, members.size), seed=derived_seed(seed, p, c), **fl_kwargs)
                orders.append(members[result.indices])
                counts.append(result.cluster_sizes)
                objective += result.objective
                class_objective[c] = class_objective.get(c, 0.0) + result.objective
            perm = interleave_positions([o.size for o in orders])
            picked.append(np.concatenate(orders)[perm])
            sizes.append(np.concatenate(counts)[perm])
        indices = np.concatenate(picked)
        weights = mean_one_weights(np.concatenate(sizes))
        extras: dict[str, Any] = {
            "pool": cfg["pool"],
            "pools": len(pools),
            "dropped_learned": int(dropped),
            "class_objective": {str(c): v for c, v in sorted(class_objective.items())},
        }
        if cfg["unit_weights"]:
            extras["cluster_weights"] = weights.tolist()
            weights = np.ones(indices.size, dtype=np.float32)
        return Subset(indices=indices, weights=weights, objective=objective, extras=extras)
