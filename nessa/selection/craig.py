"""CRAIG: Coresets for Accelerating Incremental Gradient descent (Mirzasoleiman, Bilmes, Leskovec, ICML 2020).

* **Paper.** Pick the weighted subset whose weighted gradient sum best approximates the full gradient; bounded by
  a k-medoids cost on per-example gradient distances, i.e. a facility location F(S) = Σ_i max_{j∈S} (M − d_ij),
  solved per class with greedy; the weight γ_j of a pick is its cluster size (the number of examples whose nearest
  pick it is). Deep nets use the last-layer gradient proxy g = softmax(z) − onehot(y).
* **Code** (``baharanm/craig``). Per class, a dense Euclidean block with s = max(d) − d; lazy greedy (or the SMTK
  binary, or stochastic greedy with ``--st_grd``); ``equal_num=True`` budgets ceil(k/C) per class; classes merged
  round-robin in greedy order; weights normalized to mean 1 over the subset.
* **Ours.** The same on our facility-location engine (:mod:`nessa.selection.facility_location`: the similarity
  block on the OpenCL device, lazy greedy that returns exactly the naive order, stochastic greedy, GreeDi above
  ``block_size`` per class). Options: ``features`` (``gradients`` or ``embeddings``), ``similarity`` (CRAIG's
  ``max_minus_dist`` by default, or submodlib's ``exp``, or ``cosine``), the budget rule
  (:mod:`nessa.selection.budget`; ``equal`` hands small classes' deficits to the others correctly), and
  ``weight_rule``. The subset is the classes' greedy orders interleaved in proportion to their budgets
  (:func:`~nessa.selection.facility_location.interleave`), weights are cluster sizes normalized to mean 1 over
  the whole subset, and the objective is the sum of the per-class F values.

  NeSSA's options from the paper's code: ``pool="partitions"`` (with ``partition_size`` or ``num_partitions``)
  selects one mini-batch coreset per random class-balanced partition (:mod:`nessa.selection.pools`), the budget
  split over the partitions in proportion to their sizes (exactly, largest remainder) and per class inside each;
  ``drop_learned`` (with ``learned_window``, ``learned_threshold``) drops from the candidates the examples whose
  ``losses`` stayed below the threshold for the window (:class:`~nessa.selection.learned.LearnedExampleFilter`),
  except that a class (in a pool) keeps all its candidates when fewer than its budget would remain. That filter is
  state kept **by the selector instance across calls** (positions are dataset sample positions), so the storage
  daemon keeps one selector per dataset and method; :meth:`Craig.state_dict` / :meth:`Craig.load_state_dict`
  save and restore it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from nessa.accel.reference.selection import SIMILARITY_KINDS, is_int, is_real
from nessa.errors import InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import BUDGET_RULES, class_budgets, count_from_budget, partition_class_budgets
from nessa.selection.facility_location import (
    OPTIMIZERS,
    WEIGHT_RULES,
    interleave_positions,
    maximize,
    mean_one_weights,
)
from nessa.selection.learned import LearnedExampleFilter
from nessa.selection.pools import class_balanced_partitions
from nessa.selection.registry import register

__all__ = ["FL_OPTIONS", "Craig", "check_fl_options", "derived_seed"]

#: The facility-location options CRAIG-like selectors share (name → default).
FL_OPTIONS: Mapping[str, Any] = {
    "similarity": "max_minus_dist",
    "similarity_param": None,
    "threshold": 0.0,
    "optimizer": "lazy",
    "epsilon": 0.1,
    "backend": "opencl",
    "block_size": 10_000,
    "weight_rule": "craig",
}


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. the call's seed, a pool, a class), stable across runs."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _choice(name: str, value: Any, allowed: tuple[str, ...], owner: str) -> None:
    if value not in allowed:
        raise InvalidArgumentError(f"{owner}: option {name}={value!r} is not one of {list(allowed)}")


def _number(name: str, value: Any, owner: str, *, low: float, high: float | None = None, integer: bool = False) -> None:
    ok = (is_int(value) if integer else is_real(value)) and bool(np.isfinite(float(value)))
    ok = ok and float(value) >= low and (high is None or float(value) <= high)
    if not ok:
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidArgumentError(
            f"{owner}: option {name}={value!r} must be {'an int' if integer else 'a number'} {rng}"
        )


def check_fl_options(cfg: Mapping[str, Any], owner: str) -> None:
    """Validate the :data:`FL_OPTIONS` values in ``cfg`` (raises InvalidArgumentError naming the option)."""
    _choice("similarity", cfg["similarity"], SIMILARITY_KINDS, owner)
    _choice("optimizer", cfg["optimizer"], OPTIMIZERS, owner)
    _choice("backend", cfg["backend"], ("opencl", "numpy"), owner)
    _choice("weight_rule", cfg["weight_rule"], WEIGHT_RULES, owner)
    if cfg["similarity_param"] is not None:
        _number("similarity_param", cfg["similarity_param"], owner, low=0.0)
    _number("threshold", cfg["threshold"], owner, low=-np.inf)
    _number("epsilon", cfg["epsilon"], owner, low=1e-12, high=1.0 - 1e-12)
    _number("block_size", cfg["block_size"], owner, low=2, integer=True)


@register
class Craig(Selector):
    """Per-class facility location on gradient proxies (or embeddings), cluster-size weights (see the module doc).

    Options:
        features: ``"gradients"`` (default) or ``"embeddings"``: which input the distances are taken on.
        similarity, similarity_param, threshold, optimizer, epsilon, backend, block_size, weight_rule: the
            facility-location engine's options (:func:`nessa.selection.facility_location.maximize`).
        budget_rule: ``"equal"`` (ceil(k/C) per class) or ``"proportional"`` (ceil(n_c·k/N)).
        pool: ``"class"`` (one coreset per class over all candidates) or ``"partitions"`` (one per random
            class-balanced partition; give ``partition_size`` or ``num_partitions``).
        drop_learned: drop learned examples (needs ``losses``); ``learned_window`` observations below
            ``learned_threshold``.
    """

    name: ClassVar[str] = "craig"
    description: ClassVar[str] = (
        "CRAIG: per-class facility location (lazy/stochastic greedy, GreeDi) on gradient proxies; weights are "
        "cluster sizes normalized to mean 1"
    )
    requires: ClassVar[tuple[str, ...]] = ("labels", "gradients")
    options: ClassVar[Mapping[str, Any]] = {
        "features": "gradients",
        **FL_OPTIONS,
        "budget_rule": "equal",
        "pool": "class",
        "partition_size": None,
        "num_partitions": None,
        "drop_learned": False,
        "learned_window": 5,
        "learned_threshold": 0.1,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        cfg = self.config
        owner = self.name
        if "features" in cfg:
            _choice("features", cfg["features"], ("gradients", "embeddings"), owner)
        check_fl_options(cfg, owner)
        _choice("budget_rule", cfg["budget_rule"], BUDGET_RULES, owner)
        _choice("pool", cfg["pool"], ("class", "partitions"), owner)
        if cfg["pool"] == "partitions":
            if (cfg["partition_size"] is None) == (cfg["num_partitions"] is None):
                raise InvalidArgumentError(
                    f"{owner}: pool='partitions' needs exactly one of partition_size and num_partitions"
                )
            which = "partition_size" if cfg["partition_size"] is not None else "num_partitions"
            _number(which, cfg[which], owner, low=1, integer=True)
        elif cfg["partition_size"] is not None or cfg["num_partitions"] is not None:
            raise InvalidArgumentError(f"{owner}: partition_size/num_partitions only apply with pool='partitions'")
        if not isinstance(cfg["drop_learned"], bool):
            raise InvalidArgumentError(f"{owner}: option drop_learned must be true or false")
        _number("learned_window", cfg["learned_window"], owner, low=1, integer=True)
        _number("learned_threshold", cfg["learned_threshold"], owner, low=-np.inf)
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
    def required_inputs(self) -> tuple[str, ...]:
        """``labels``, the configured features, and ``losses`` with ``drop_learned``."""
        need = ("labels", str(self.config.get("features", "gradients")))
        return need + (("losses",) if self.config["drop_learned"] else ())

    def _features(self, inputs: SelectionInputs) -> np.ndarray:
        """The per-sample vectors the facility location runs on (AdaCore overrides this)."""
        feats = getattr(inputs, str(self.config["features"]))
        return np.asarray(feats, dtype=np.float32)

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        cfg = self.config
        feats = self._features(inputs)
        labels = np.asarray(inputs.labels, dtype=np.int64)
        n = labels.size
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
            budgets = partition_class_budgets(labels, pools, k, rule=cfg["budget_rule"])
        else:
            pools = [np.arange(n, dtype=np.int64)]
            budgets = [class_budgets(labels, k, rule=cfg["budget_rule"])]
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
                members = pool[labels[pool] == c]
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
        extras: dict[str, Any] = {
            "pool": cfg["pool"],
            "pools": len(pools),
            "dropped_learned": int(dropped),
            "class_objective": {str(c): v for c, v in sorted(class_objective.items())},
        }
        return Subset(indices=indices, weights=mean_one_weights(np.concatenate(sizes)), objective=objective,
                      extras=extras)  # fmt: skip
