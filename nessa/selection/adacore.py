"""AdaCore: Adaptive Second-order Coresets (Pooladzandi, Davini, Mirzasoleiman, ICML 2022).

* **Paper.** Approximate the *preconditioned* full gradient H⁻¹g: CRAIG's facility location on the vectors
  v_i = ḡ_i / H̄_i, where ḡ is an exponential moving average (β1) of the per-example gradient proxy
  ĝ = softmax(z) − onehot(y) and H̄ = sqrt(EMA_β2(diag(H)²)) is AdaHessian's RMS of Hutchinson estimates of the
  loss Hessian diagonal (b_H = 64 batches), both bias-corrected; per class, budgets proportional to class sizes;
  weights are cluster sizes.
* **Code.** None public ("code coming soon"); the group's CREST repo holds the same AdaHessian-style estimator.
* **Ours.** The Hessian diagonal is the closed form for softmax cross-entropy w.r.t. the logits:
  diag(H_i) = p_i ⊙ (1 − p_i), with p_i = ĝ_i + onehot(y_i) recovered from the ``gradients`` and ``labels`` (no
  other input). It is exact (no Hutchinson noise), needs no backward pass, and lives in the same C-dim space
  as ĝ. The EMA state (ḡ and EMA of h², 2·C floats a sample, keyed by the sample's position) is kept **by the
  selector instance across calls**, with one step counter t for the bias corrections 1 − β^t (every call sees every
  candidate). v = (m1/(1 − β1^t)) / (sqrt(m2/(1 − β2^t)) + eps), β1 = 0.9, β2 = 0.999, eps = 1e-4 (AdaHessian's
  defaults, as the CREST code uses). Then CRAIG's per-class facility location on v with proportional budgets.
  Everything else (similarity, optimizer, GreeDi, pools, drop_learned) is :class:`~nessa.selection.craig.Craig`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.selection.base import SelectionInputs
from nessa.selection.budget import BUDGET_RULES
from nessa.selection.craig import CoresetOptions, Craig
from nessa.selection.options import Options, option
from nessa.selection.registry import register

__all__ = ["AdaCore", "AdaCoreOptions", "softmax_ce_hessian_diag"]

#: How far p = g + onehot(y) may stray outside [0, 1] (float32 rounding) before the input is rejected.
_P_TOLERANCE = 1e-3


def softmax_ce_hessian_diag(gradients: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Diagonal of the softmax cross-entropy Hessian w.r.t. the logits, p ⊙ (1 − p), from g = p − onehot(y).

    Args:
        gradients: (n, C) per-sample ``softmax(z) − onehot(y)``.
        labels: (n,) class of each sample, in [0, C).

    Returns:
        float64 (n, C).

    Raises:
        InvalidArgumentError: labels outside [0, C) or gradients that are not ``p − onehot(y)`` for a probability p.
    """
    g = np.asarray(gradients, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if g.ndim != 2 or y.shape != (g.shape[0],):
        raise InvalidArgumentError(f"gradients (n, C) and labels (n,) do not fit: {g.shape} and {y.shape}")
    num_classes = g.shape[1]
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InvalidArgumentError(
            f"labels must be in [0, {num_classes}) (one gradient column per class); got {y.min()}..{y.max()}"
        )
    p = g.copy()
    p[np.arange(y.size), y] += 1.0
    if p.size and (p.min() < -_P_TOLERANCE or p.max() > 1.0 + _P_TOLERANCE):
        raise InvalidArgumentError(
            "adacore needs gradients = softmax(z) − onehot(y) (so gradients + onehot(labels) is a probability "
            f"vector); got values giving p in [{p.min():.3g}, {p.max():.3g}]"
        )
    p = np.clip(p, 0.0, 1.0)
    return p * (1.0 - p)


@dataclass(frozen=True)
class AdaCoreOptions(CoresetOptions):
    """AdaCore's options: CRAIG's (without ``features``: always the preconditioned gradients) and the EMA's."""

    budget_rule: str = option(
        "proportional", "choice", choices=BUDGET_RULES, help="proportional per class (the paper), equal or global"
    )
    beta1: float = option(0.9, "number", low=0.0, high=1.0, open_high=True, help="EMA decay of the gradient")
    beta2: float = option(0.999, "number", low=0.0, high=1.0, open_high=True, help="EMA decay of the curvature²")
    eps: float = option(1e-4, "number", low=0.0, open_low=True, help="added to the curvature RMS (AdaHessian's)")


@register
class AdaCore(Craig):
    """CRAIG on curvature-normalized gradients v = ḡ / (sqrt(EMA h²) + eps), EMA state kept across calls."""

    name: ClassVar[str] = "adacore"
    description: ClassVar[str] = (
        "AdaCore: CRAIG on Hessian-preconditioned gradient proxies (closed-form softmax-CE curvature, EMA across "
        "calls); proportional per-class budgets"
    )
    Options: ClassVar[type[Options]] = AdaCoreOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._m1: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._t = 0

    @classmethod
    def inputs_for(cls, opts: Any) -> tuple[str, ...]:
        """``labels`` and ``gradients`` (and ``losses`` with ``drop_learned``)."""
        return ("labels", "gradients") + (("losses",) if opts.drop_learned else ())

    def state_dict(self) -> dict[str, Any]:
        """The EMA state and step counter (plus CRAIG's state), JSON-able."""
        state = super().state_dict()
        state["ema"] = (
            None
            if self._m1 is None or self._m2 is None
            else {"t": self._t, "m1": self._m1.tolist(), "m2": self._m2.tolist()}
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        super().load_state_dict(state)
        ema = state.get("ema")
        if ema is None:
            self._m1 = self._m2 = None
            self._t = 0
            return
        try:
            m1 = np.asarray(ema["m1"], dtype=np.float64)
            m2 = np.asarray(ema["m2"], dtype=np.float64)
            t = int(ema["t"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"adacore: bad EMA state ({exc}); pass what state_dict() returned") from exc
        if m1.ndim != 2 or m1.shape != m2.shape or t < 1 or (m2 < 0).any():
            raise InvalidArgumentError("adacore: bad EMA state (m1, m2 must be equal-shaped (n, C), m2 >= 0, t >= 1)")
        self._m1, self._m2, self._t = m1, m2, t

    def reset(self) -> None:
        """Forget the EMA state (and the learned-example filter)."""
        super().reset()
        self._m1 = self._m2 = None
        self._t = 0

    def _features(self, inputs: SelectionInputs) -> np.ndarray:
        g = np.asarray(inputs.gradients, dtype=np.float64)
        h = softmax_ce_hessian_diag(g, np.asarray(inputs.labels))
        b1, b2, eps = float(self.config["beta1"]), float(self.config["beta2"]), float(self.config["eps"])
        if self._m1 is None or self._m2 is None:
            self._m1 = np.zeros_like(g)
            self._m2 = np.zeros_like(g)
        elif self._m1.shape != g.shape:
            raise FailedPreconditionError(
                f"adacore keeps per-sample EMA state for {self._m1.shape[0]} samples × {self._m1.shape[1]} classes "
                f"but got gradients {g.shape}; use one selector per dataset, or call reset()"
            )
        self._m1 = b1 * self._m1 + (1.0 - b1) * g
        self._m2 = b2 * self._m2 + (1.0 - b2) * h * h
        self._t += 1
        g_hat = self._m1 / (1.0 - b1**self._t)
        h_hat = np.sqrt(self._m2 / (1.0 - b2**self._t))
        return (g_hat / (h_hat + eps)).astype(np.float32)
