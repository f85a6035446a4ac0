"""CREST: Coresets for Stochastic Gradient Descent (Yang, Kang, Mirzasoleiman, ICML 2023).

Instead of one coreset of all data, CREST draws P random pools V_p of about r examples and picks from each a
*mini-batch coreset* of the mini-batch size m by facility location on last-layer gradients g_i = p_i − y_i; a
mini-batch coreset is nearly unbiased with about r/m times less variance than a random mini-batch. Training
continues on these coresets while a quadratic model of the loss around the selection point tracks the real loss;
when its relative error ρ exceeds τ, the trainer asks for a new selection.

* **Paper.** Pools of r = 1 % of N, m = 128, FL per pool; quadratic model F_l(δ) = L(w_l) + g_Sᵀδ + ½δᵀdiag(H_S)δ
  with Hutchinson curvature; every T1 steps, ρ = |F_l(δ) − L_r(w_l + δ)| / L_r(w_l + δ) on a random V_r, reselect
  if ρ > τ; drop "learned" examples (loss < α for a window of T2) from the pools.
* **Code** (``crest_trainer.py`` with submodlib). Pools are class-balanced (ceil(0.01·N/C) per class), FL per class
  inside each pool with budget ceil(m/C) (so a "mini-batch coreset" can exceed m) and the kernel
  exp(−‖g_i − g_j‖/C), lazy greedy; the P coresets are concatenated and shuffled, weights normalized to mean 1
  over the union. The check compares |L − F| with τ·L, forwarding *all* data; the curvature is AdaHessian's
  sqrt(EMA h²). Learned-example dropping (off by default) keeps examples whose loss exceeded α in at least one of
  the last 5 slots; a class keeps its whole pool if too few remain.
* **Ours.** The selector does the storage-side part: with k = the budget, P = ceil(k/m) pools are drawn as random
  class-balanced partitions (:func:`nessa.selection.pools.class_balanced_partitions`) of the active candidates:
  the active set is dealt into max(P, ⌊active/r⌋) parts (so each holds r to 2r examples, r = ``pool_size``,
  default max(1 % of N, 4·m) since 1 % of a small set is below m; fewer, smaller parts when P pools of r do not
  fit) and the first P are the pools; they are disjoint. Pool p gets a budget m_p (k split as evenly as possible
  over the pools, so the total is exactly k unless a pool is smaller than its share), split over classes by
  :func:`nessa.selection.budget.class_budgets` (``class_rule``, default ``equal``) and trimmed back to exactly m_p
  where ceil rounding overshoots, one fewer in randomly chosen classes (seeded; the code lets a "mini-batch
  coreset" exceed m instead), and per class FL (:func:`nessa.selection.facility_location.maximize`, exp
  kernel; naive greedy on small ground sets, lazy above: the same picks) picks the coreset; weights are cluster
  sizes normalized to mean 1 over the union. With ``drop_learned`` the selector instance keeps a
  :class:`nessa.selection.learned.LearnedExampleFilter` across calls: every call records all candidates'
  ``losses`` (so no pool-only bookkeeping is needed: pass the losses of every candidate) and
  candidates learned in each of the last ``learned_window`` calls, this one included (loss below
  ``learned_threshold``), are left out of the pools, except in a class where that would leave fewer than
  ceil(``learned_min_keep``·n_c) examples (that class keeps all), and nothing is dropped when fewer than k
  candidates would remain. The loss-drift trigger runs in the trainer, which owns the model: this module gives it
  :class:`QuadraticLossModel` and :func:`crest_should_reselect` (the ρ > τ test, in the code's division-free
  form), and :func:`crest_adapt` (the code's T1/P adaptation). ``Subset.extras`` carries what the trainer and the
  tests need: the mini-batches, the pools (V_r for the loss check), the coreset's weighted mean gradient and the
  pools' mean gradient (and their distance: the gradient-estimate error), and the pools' mean loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import PER_CLASS_RULES, class_budgets, count_from_budget
from nessa.selection.facility_location import maximize, mean_one_weights
from nessa.selection.learned import LearnedExampleFilter
from nessa.selection.options import Options, option
from nessa.selection.pools import class_balanced_partitions
from nessa.selection.registry import register

__all__ = ["Crest", "CrestOptions", "QuadraticLossModel", "crest_adapt", "crest_should_reselect"]

#: ``optimizer="auto"`` on the numpy backend runs naive greedy on per-class ground sets up to this size (lazy above);
#: on OpenCL it always runs lazy greedy, one launch per ground set.
NAIVE_MAX_GROUND = 512
#: The pool size when not given: max(POOL_FRACTION·N, POOL_MINIBATCH_MULTIPLE·m) (CREST: r = 1 % of N ≈ 4·m).
POOL_FRACTION = 0.01
POOL_MINIBATCH_MULTIPLE = 4


def crest_should_reselect(approx_loss: float, true_loss: float, tau: float) -> bool:
    """CREST's drift test: reselect when the quadratic model's relative error ρ exceeds τ.

    ρ = |F_l(δ) − L(w_l + δ)| / L(w_l + δ); the test is done as |F − L| > τ·L (as the code does), which needs no
    division and is False when both losses are 0.

    Args:
        approx_loss: the quadratic model's prediction F_l(δ) (see :meth:`QuadraticLossModel.predict`).
        true_loss: the loss L(w_l + δ) measured on the check set V_r (mean cross-entropy, >= 0).
        tau: the threshold τ > 0 (paper: 0.05 CIFAR-10, 0.01 CIFAR-100, 0.005 TinyImageNet; code default 0.1).

    Returns:
        True when the trainer should ask for a new selection.

    Raises:
        InvalidArgumentError: a non-finite loss, a negative true loss, or τ <= 0.
    """
    approx, true = float(approx_loss), float(true_loss)
    if not (math.isfinite(approx) and math.isfinite(true)):
        raise InvalidArgumentError(f"crest: losses must be finite; got approx={approx}, true={true}")
    if true < 0:
        raise InvalidArgumentError(f"crest: the measured loss must be >= 0 (a cross-entropy); got {true}")
    if not math.isfinite(float(tau)) or tau <= 0:
        raise InvalidArgumentError(f"crest: tau must be a number > 0; got {tau!r}")
    return abs(true - approx) > float(tau) * true


def crest_adapt(
    first_curvature_norm: float,
    curvature_norm: float,
    *,
    interval_mul: float = 1.0,
    batch_num_mul: int = 5,
    steps_per_epoch: int,
) -> tuple[int, int]:
    """The code's adaptation at each reselection: the check interval T1 and the number of mini-batch coresets P.

    T1 = ceil(first_curvature_norm / curvature_norm · h) and P = min(T1·b, steps_per_epoch), where the norms are
    those of the curvature vector at the first selection and now, h = ``interval_mul`` and b = ``batch_num_mul``.
    The next selection's budget is then P·m samples (m = the mini-batch size).

    Args:
        first_curvature_norm: ‖diag H‖ at the first selection (> 0).
        curvature_norm: ‖diag H‖ now (> 0).
        interval_mul: h (paper: tuned over {1, 2, 4, 8, 10}; code default 1).
        batch_num_mul: b (paper and code: 5).
        steps_per_epoch: steps in one (fractional) epoch, the cap on P.

    Returns:
        ``(check_interval, num_minibatches)``, both >= 1.
    """
    first, now = float(first_curvature_norm), float(curvature_norm)
    if not (math.isfinite(first) and math.isfinite(now)) or first <= 0 or now <= 0:
        raise InvalidArgumentError(f"crest: curvature norms must be finite and > 0; got first={first}, now={now}")
    if not math.isfinite(float(interval_mul)) or interval_mul <= 0:
        raise InvalidArgumentError(f"crest: interval_mul must be > 0; got {interval_mul!r}")
    if batch_num_mul < 1 or steps_per_epoch < 1:
        raise InvalidArgumentError(
            f"crest: batch_num_mul and steps_per_epoch must be >= 1; got {batch_num_mul}, {steps_per_epoch}"
        )
    interval = max(1, math.ceil(first / now * float(interval_mul)))
    return interval, max(1, min(interval * int(batch_num_mul), int(steps_per_epoch)))


@dataclass
class QuadraticLossModel:
    """CREST's local quadratic model of the loss at a selection point w_l: F_l(δ) = L + gᵀδ + ½ δᵀ(h ⊙ δ).

    The arrays may be numpy arrays or torch tensors (on any device): only ``*``, ``+`` and ``.sum()`` are used, so
    the trainer need not copy parameter-sized vectors off its device. All vectors are flattened over the same
    parameters (all of the model's, or only the last layer's for very large models, as the paper allows).

    Attributes:
        start_loss: L(w_l), the weighted coreset loss (or the loss on V_r) at the selection point.
        gradient: g_S, the weighted coreset gradient at w_l (code: averaged over the coreset union).
        curvature: diag(H_S), the Hessian-diagonal estimate at w_l (code: AdaHessian's bias-corrected
            sqrt(EMA of Hutchinson h²) + eps, a positive vector).
    """

    start_loss: float
    gradient: Any
    curvature: Any

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.start_loss)):
            raise InvalidArgumentError(f"crest: start_loss must be finite; got {self.start_loss}")
        if tuple(self.gradient.shape) != tuple(self.curvature.shape):
            raise InvalidArgumentError(
                f"crest: gradient {tuple(self.gradient.shape)} and curvature {tuple(self.curvature.shape)} must "
                "have the same shape (flatten both over the same parameters)"
            )

    def predict(self, delta: Any) -> float:
        """F_l(δ) for the accumulated update δ = w − w_l (same shape as ``gradient``)."""
        if tuple(delta.shape) != tuple(self.gradient.shape):
            raise InvalidArgumentError(
                f"crest: delta has shape {tuple(delta.shape)} but the model's gradient has "
                f"{tuple(self.gradient.shape)}; accumulate δ over the same parameters"
            )
        linear = float((self.gradient * delta).sum())
        quadratic = float((delta * self.curvature * delta).sum())
        return float(self.start_loss) + linear + 0.5 * quadratic

    def relative_error(self, delta: Any, true_loss: float) -> float:
        """ρ = |F_l(δ) − L| / L (``inf`` when L = 0 and F ≠ 0, 0 when both are 0)."""
        approx, true = self.predict(delta), float(true_loss)
        diff = abs(approx - true)
        if true == 0.0:
            return 0.0 if diff == 0.0 else math.inf
        return diff / abs(true)

    def should_reselect(self, delta: Any, true_loss: float, tau: float) -> bool:
        """The ρ > τ test (:func:`crest_should_reselect`) for the accumulated update ``delta``."""
        return crest_should_reselect(self.predict(delta), true_loss, tau)


@dataclass(frozen=True)
class CrestOptions(Options):
    """CREST's options (see :class:`Crest`)."""

    minibatch_size: int = option(128, "int", low=1, help="m, the size of one mini-batch coreset")
    pool_size: int | float | None = option(None, "size", help="r per random pool (None: max(1 % of N, 4·m))")
    class_rule: str = option("equal", "choice", choices=PER_CLASS_RULES, help="per-class budget rule in a pool")
    optimizer: str = option(
        "auto",
        "choice",
        choices=("auto", "lazy", "naive", "stochastic"),
        help="greedy (auto: lazy; naive on small sets with numpy)",
    )
    epsilon: float = option(0.1, "number", low=0.0, high=1.0, help="stochastic greedy's ε")
    similarity_param: float | None = option(None, "number", low=0.0, open_low=True, help="D of exp(−d/D)")
    drop_learned: bool = option(False, "bool", help="leave out examples learned for the window")
    learned_window: int = option(5, "int", low=1, help="calls an example's loss must stay below the threshold")
    learned_threshold: float = option(0.1, "number", help="α, on CREST's scale (cross-entropy of the logits)")
    learned_min_keep: float = option(0.1, "number", low=0.0, high=1.0, help="a class keeps all below this share")
    backend: str = option("opencl", "choice", choices=("opencl", "numpy"), help="where distances are computed")
    unit_weights: bool = option(False, "bool", help="return weight 1 for every pick (train unweighted)")

    def validate(self, owner: str) -> None:
        """Stochastic greedy needs 0 < ε < 1."""
        if self.optimizer == "stochastic" and not 0.0 < self.epsilon < 1.0:
            raise InvalidArgumentError(f"{owner}: stochastic greedy needs 0 < epsilon < 1")


@register
class Crest(Selector):
    """CREST mini-batch coresets: FL on last-layer gradients inside random class-balanced pools.

    Inputs: ``labels``, ``gradients`` (p − y), and ``losses`` when ``drop_learned`` is on. The instance keeps the
    learned-example state across calls (:meth:`state_dict` / :meth:`load_state_dict` save and restore it);
    candidates are identified by position, so every call must pass the same candidate set.

    Options (:class:`CrestOptions`):
        minibatch_size: m, the size of one mini-batch coreset (paper/code: 128); P = ceil(budget/m).
        pool_size: r, examples per random pool: a count, a fraction of the candidates, or ``None`` for
            max(1 % of N, 4·m).
        class_rule: per-class budget rule inside a pool: ``"equal"`` (code) or ``"proportional"``.
        optimizer: facility-location greedy: ``"auto"`` (lazy greedy, one device launch per ground set; with the
            numpy backend naive greedy for ground sets of at most ``NAIVE_MAX_GROUND`` elements, faster there: the
            same picks either way, since lazy greedy returns exactly the naive order), ``"lazy"`` (code), ``"naive"`` or
            ``"stochastic"``.
        epsilon: stochastic greedy's ε.
        similarity_param: D of the exp(−d/D) kernel (``None``: the gradient dimension, as submodlib).
        drop_learned: leave out examples learned for ``learned_window`` calls (code default False).
        learned_window: calls an example's loss must stay below the threshold (code: 5 slots).
        learned_threshold: α (paper and code: 0.1).
        learned_min_keep: a class keeps all its examples when dropping would leave fewer than this fraction.
        backend: ``"opencl"`` (default) or ``"numpy"``.
        unit_weights: every weight 1 (train unweighted); the submodlib weights are in ``extras["cluster_weights"]``.
    """

    name: ClassVar[str] = "crest"
    description: ClassVar[str] = (
        "CREST (ICML 2023): mini-batch coresets by facility location on p-y inside random class-balanced pools, "
        "with learned-example dropping; the trainer reselects when its quadratic loss model drifts"
    )
    Options: ClassVar[type[Options]] = CrestOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        cfg = self.config
        self.learned = LearnedExampleFilter(int(cfg["learned_window"]), float(cfg["learned_threshold"]))
        self._num_candidates: int | None = None

    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """``labels`` and ``gradients``, plus ``losses`` with ``drop_learned``."""
        return ("labels", "gradients", "losses") if opts.drop_learned else ("labels", "gradients")

    def state_dict(self) -> dict[str, Any]:
        """The state kept across calls (the learned-example filter and the candidate count)."""
        return {"num_candidates": self._num_candidates, "learned": self.learned.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._num_candidates = state.get("num_candidates")
        self.learned.load_state_dict(state["learned"])

    def _active(self, inputs: SelectionInputs, k: int) -> tuple[np.ndarray, int]:
        """Candidates the pools are drawn from (all, minus learned ones), and how many were dropped."""
        labels = inputs.labels
        if labels is None:  # guaranteed by ``requires``
            raise InvalidArgumentError("crest needs labels")
        n = len(labels)
        if self._num_candidates is not None and self._num_candidates != n:
            raise FailedPreconditionError(
                f"crest: this selector has state for {self._num_candidates} candidates but got {n}; CREST's "
                "learned-example state is per candidate position: use a new selector for a different candidate set"
            )
        self._num_candidates = n
        if not self.config["drop_learned"]:
            return np.arange(n, dtype=np.int64), 0
        if inputs.losses is None:
            raise InvalidArgumentError(
                "crest: drop_learned needs per-sample losses; pass losses or set drop_learned=False"
            )
        self.learned.update(np.arange(n, dtype=np.int64), inputs.losses)
        learned = np.asarray(self.learned.learned_mask(n), dtype=bool)  # the last ``window`` calls, this one included
        keep = ~learned
        for c in np.unique(labels):
            members = labels == c
            needed = max(1, math.ceil(float(self.config["learned_min_keep"]) * int(members.sum())))
            if int(np.count_nonzero(keep & members)) < needed:
                keep[members] = True
        if int(keep.sum()) < k:  # never drop below the budget
            keep[:] = True
        active = np.flatnonzero(keep).astype(np.int64)
        return active, n - len(active)

    def feature_rows(self, labels: np.ndarray, budget: Budget, seed: int = 0) -> np.ndarray | None:
        """The union of the pools :meth:`select` draws (``None`` with ``drop_learned``, which reads every loss).

        The pools depend only on the labels, the budget and the seed, so a caller that computes features (the
        daemon's proxy pass) needs them at these rows only: with the defaults, P = ceil(k/m) pools of about 1 % of
        N each, a small share of the data.
        """
        if self.config["drop_learned"]:
            return None
        labels = np.asarray(labels)
        n = len(labels)
        if n == 0:
            raise InvalidArgumentError(f"{self.name}: no candidates to select from")
        k = count_from_budget(n, budget)
        num_pools = max(1, math.ceil(k / int(self.config["minibatch_size"])))
        pools = self._pools(labels, np.arange(n, dtype=np.int64), num_pools, int(seed))
        return np.unique(np.concatenate(pools)) if pools else np.empty(0, dtype=np.int64)

    def _pools(self, labels: np.ndarray, active: np.ndarray, num_pools: int, seed: int) -> list[np.ndarray]:
        """``num_pools`` disjoint random class-balanced pools of about ``pool_size`` active candidates each."""
        n = len(labels)
        size = self.config["pool_size"]
        if size is None:
            r = max(math.ceil(POOL_FRACTION * n), POOL_MINIBATCH_MULTIPLE * int(self.config["minibatch_size"]))
        else:
            try:
                r = count_from_budget(n, size)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"crest: pool_size {size!r} does not fit {n} candidates: {exc}") from exc
        # Split the active set into parts of at least r (fewer, smaller parts when P pools of r do not fit) and keep
        # the first P: the deal is class-balanced, so the kept parts are too.
        parts = class_balanced_partitions(labels[active], num_partitions=max(num_pools, len(active) // r), seed=seed)
        return [active[p] for p in parts[:num_pools]]

    def _optimizer(self, ground: int) -> str:
        name = str(self.config["optimizer"])
        if name == "auto":
            small = ground <= NAIVE_MAX_GROUND and self.config["backend"] == "numpy"
            return "naive" if small else "lazy"
        return name

    @staticmethod
    def _exact(per_class: dict[int, int], take: int, rng: np.random.Generator) -> dict[int, int]:
        """Trim a per-class split whose total overshoots ``take`` (ceil rounding) by one each in random classes."""
        surplus = sum(per_class.values()) - take
        if surplus <= 0:
            return per_class
        out = dict(per_class)
        keys = [c for c in sorted(out) if out[c] > 0]
        for c in rng.choice(np.asarray(keys), size=surplus, replace=False):
            out[int(c)] -= 1
        return out

    def _select(self, inputs: SelectionInputs, budget: Budget, seed: int) -> Subset:
        cfg = self.config
        labels, grads = inputs.labels, inputs.gradients
        if labels is None or grads is None:  # guaranteed by ``requires``
            raise InvalidArgumentError("crest needs labels and gradients")
        n = len(labels)
        k = count_from_budget(n, budget)
        m = int(cfg["minibatch_size"])
        num_pools = max(1, math.ceil(k / m))
        active, dropped = self._active(inputs, k)
        pools = self._pools(labels, active, num_pools, seed)
        num_pools = len(pools)
        rng = np.random.default_rng(seed)
        shares = [k // num_pools + (1 if p < k % num_pools else 0) for p in range(num_pools)]
        minibatches: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        objective = 0.0
        for p, (pool, share) in enumerate(zip(pools, shares, strict=True)):
            take = min(share, len(pool))
            if take == 0:
                continue
            per_class = self._exact(class_budgets(labels[pool], take, rule=cfg["class_rule"]), take, rng)
            picked: list[np.ndarray] = []
            counts: list[np.ndarray] = []
            for c in sorted(per_class):
                kc = int(per_class[c])
                members = pool[labels[pool] == c]
                kc = min(kc, len(members))
                if kc == 0:
                    continue
                result = maximize(
                    grads[members],
                    kc,
                    similarity="exp",
                    similarity_param=cfg["similarity_param"],
                    optimizer=self._optimizer(len(members)),
                    epsilon=float(cfg["epsilon"]),
                    seed=seed * 1_000_003 + p,
                    backend=cfg["backend"],
                    weight_rule="submodlib",
                )
                picked.append(members[np.asarray(result.indices, dtype=np.int64)])
                counts.append(np.asarray(result.cluster_sizes, dtype=np.float64))
                objective += float(result.objective)
            minibatches.append(np.concatenate(picked))
            sizes.append(np.concatenate(counts))
        indices = np.concatenate(minibatches) if minibatches else np.empty(0, dtype=np.int64)
        gamma = np.concatenate(sizes) if sizes else np.empty(0, dtype=np.float64)
        weights = mean_one_weights(gamma).astype(np.float64)
        union = np.sort(np.concatenate(pools)) if pools else np.empty(0, dtype=np.int64)
        coreset_mean = (weights[:, None] * grads[indices].astype(np.float64)).sum(axis=0) / max(weights.sum(), 1e-300)
        pool_mean = grads[union].astype(np.float64).mean(axis=0)
        extras: dict[str, Any] = {
            "minibatches": [b.tolist() for b in minibatches],
            "pools": [np.sort(p).tolist() for p in pools],
            "coreset_mean_gradient": coreset_mean.tolist(),
            "pool_mean_gradient": pool_mean.tolist(),
            "gradient_error": float(np.linalg.norm(coreset_mean - pool_mean)),
            "num_pools": num_pools,
            "active": len(active),
            "learned_dropped": int(dropped),
        }
        if inputs.losses is not None:
            extras["pool_mean_loss"] = float(inputs.losses[union].astype(np.float64).mean())
            extras["coreset_weighted_loss"] = float(
                (weights * inputs.losses[indices].astype(np.float64)).sum() / max(weights.sum(), 1e-300)
            )
        out_weights = weights.astype(np.float32)
        if cfg["unit_weights"]:
            extras["cluster_weights"] = out_weights.tolist()
            out_weights = np.ones(indices.size, dtype=np.float32)
        return Subset(indices=indices, weights=out_weights, objective=objective, extras=extras)
