"""CREST's loss-drift trigger on the trainer side: the quadratic model at a selection point and its check.

The storage daemon picks CREST's mini-batch coresets; the trainer, which owns the full-precision model, decides
*when* to ask for new ones (docs/algorithms.md, CREST). At each selection point w_l the :class:`DriftMonitor` builds the
quadratic model F_l(δ) = L(w_l) + gᵀδ + ½ δᵀ(h ⊙ δ) of the loss on a random check set V_r
(:class:`nessa.selection.crest.QuadraticLossModel`), where

* L(w_l) is the mean cross-entropy on V_r at w_l,
* g is the gradient of the *weighted coreset loss* mean(w_i · CE_i) over the selected samples at w_l,
* h is AdaHessian's curvature, as the CREST code has it: a Hutchinson estimate z ⊙ Hz (Rademacher z) of the
  weighted coreset loss's Hessian diagonal, squared into an EMA (β₂, kept across selections), bias-corrected,
  square-rooted, plus ε.

Every T1 steps the trainer calls :meth:`DriftMonitor.check` with the current weights: δ = w − w_l (the actual
displacement, momentum and weight decay included), the true loss is measured on V_r again, and
:func:`nessa.selection.crest.crest_should_reselect` says whether ρ = |F − L| / L exceeds τ. At each selection
:func:`nessa.selection.crest.crest_adapt` turns the curvature norms into the next check interval T1 and the
number P of mini-batch coresets to ask for.

All forwards here run the model in ``eval()`` mode (batch-norm running statistics, no update to them) and
restore the previous mode afterwards, so checking never changes training. Vectors stay on the model's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from nessa.errors import FailedPreconditionError, InvalidArgumentError
from nessa.selection.crest import QuadraticLossModel, crest_adapt

__all__ = ["DriftCheck", "DriftMonitor"]


@dataclass(frozen=True)
class DriftCheck:
    """One drift check.

    Attributes:
        approx_loss: the quadratic model's prediction F_l(δ).
        true_loss: the measured loss on the check set.
        rho: the relative error |F − L| / L.
        reselect: whether ρ > τ.
    """

    approx_loss: float
    true_loss: float
    rho: float
    reselect: bool


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


class DriftMonitor:
    """Builds CREST's quadratic loss model at each selection and tests it every T1 steps.

    Args:
        model: the model being trained (its trainable parameters are the quadratic model's coordinates).
        tau: τ, the relative-error threshold (> 0).
        interval_mul: h of the T1 adaptation.
        batch_num_mul: b of the P adaptation.
        beta2: EMA factor of the squared Hutchinson estimates (AdaHessian / CREST: 0.999).
        eps: added to the curvature (AdaHessian's ε).
        hutchinson_samples: Rademacher probes per estimate.
        seed: seeds the Rademacher probes.
    """

    def __init__(
        self,
        model: nn.Module,
        tau: float = 0.05,
        interval_mul: float = 1.0,
        batch_num_mul: int = 5,
        beta2: float = 0.999,
        eps: float = 1e-4,
        hutchinson_samples: int = 1,
        seed: int = 0,
    ) -> None:
        if not math.isfinite(float(tau)) or tau <= 0:
            raise InvalidArgumentError(f"CREST tau must be a number > 0; got {tau!r}")
        if not 0 < beta2 < 1:
            raise InvalidArgumentError(f"CREST beta2 must be in (0, 1); got {beta2}")
        if hutchinson_samples < 1:
            raise InvalidArgumentError(f"hutchinson_samples must be >= 1; got {hutchinson_samples}")
        self.model = model
        self.tau = float(tau)
        self.interval_mul = float(interval_mul)
        self.batch_num_mul = int(batch_num_mul)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.hutchinson_samples = int(hutchinson_samples)
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(int(seed))
        self._sq_ema: torch.Tensor | None = None
        self._ema_steps = 0
        self.first_curvature_norm: float | None = None
        self.curvature_norm: float | None = None
        self.quadratic: QuadraticLossModel | None = None
        self._anchor: torch.Tensor | None = None
        self._check: tuple[torch.Tensor, torch.Tensor] | None = None
        self.checks = 0
        self.selections = 0

    def _weighted_loss(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(self.model(x), y, reduction="none") * w).mean()

    def _check_loss(self) -> float:
        if self._check is None:
            raise FailedPreconditionError("CREST drift monitor has no check set; call reset() at a selection first")
        x, y = self._check
        with _EvalMode(self.model), torch.no_grad():
            return float(F.cross_entropy(self.model(x), y).item())

    def _rademacher(self, like: torch.Tensor) -> torch.Tensor:
        z = torch.randint(0, 2, like.shape, generator=self._gen, dtype=torch.int8).to(like.device)
        return z.to(like.dtype) * 2 - 1

    def reset(
        self,
        coreset_x: torch.Tensor,
        coreset_y: torch.Tensor,
        coreset_w: torch.Tensor,
        check_x: torch.Tensor,
        check_y: torch.Tensor,
    ) -> None:
        """Start a new quadratic model at the current weights (a selection point).

        Args:
            coreset_x: the selected samples (or a batch of them), on the model's device.
            coreset_y: their labels.
            coreset_w: their weights.
            check_x: the check set V_r (random samples of the candidates).
            check_y: its labels.
        """
        if len(coreset_x) == 0 or len(check_x) == 0:
            raise InvalidArgumentError("CREST needs a non-empty coreset and check set to build its loss model")
        params = _params(self.model)
        # Hessian-vector products need double backward, which only SDPA's math kernel has (a user's attention).
        with _EvalMode(self.model), sdpa_kernel(SDPBackend.MATH):
            loss = self._weighted_loss(coreset_x, coreset_y, coreset_w)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            h_sq = [torch.zeros_like(p) for p in params]
            for i in range(self.hutchinson_samples):
                zs = [self._rademacher(p) for p in params]
                last = i == self.hutchinson_samples - 1
                hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=not last)
                for acc, z, v in zip(h_sq, zs, hz, strict=True):
                    acc.add_((z * v).detach() ** 2 / self.hutchinson_samples)
        gradient = _flat([g.detach() for g in grads])
        sq = _flat(h_sq)
        prior = torch.zeros_like(sq) if self._sq_ema is None else self._sq_ema
        self._sq_ema = prior * self.beta2 + sq * (1 - self.beta2)
        self._ema_steps += 1
        curvature = torch.sqrt(self._sq_ema / (1 - self.beta2**self._ema_steps)) + self.eps
        self._check = (check_x, check_y)
        self._anchor = _flat([p.detach() for p in params]).clone()
        self.quadratic = QuadraticLossModel(start_loss=self._check_loss(), gradient=gradient, curvature=curvature)
        norm = float(torch.linalg.vector_norm(curvature).item())
        if self.first_curvature_norm is None:
            self.first_curvature_norm = norm
        self.curvature_norm = norm
        self.selections += 1

    def adapt(self, steps_per_epoch: int) -> tuple[int, int]:
        """The next check interval T1 and number of mini-batch coresets P (CREST code's adaptation)."""
        if self.first_curvature_norm is None or self.curvature_norm is None:
            raise FailedPreconditionError("CREST drift monitor: call reset() at a selection before adapt()")
        return crest_adapt(
            self.first_curvature_norm,
            self.curvature_norm,
            interval_mul=self.interval_mul,
            batch_num_mul=self.batch_num_mul,
            steps_per_epoch=steps_per_epoch,
        )

    def check(self) -> DriftCheck:
        """Measure the loss on the check set at the current weights and compare it with the quadratic model."""
        if self.quadratic is None or self._anchor is None:
            raise FailedPreconditionError("CREST drift monitor: call reset() at a selection before check()")
        delta = _flat([p.detach() for p in _params(self.model)]) - self._anchor
        true_loss = self._check_loss()
        approx = self.quadratic.predict(delta)
        rho = self.quadratic.relative_error(delta, true_loss)
        self.checks += 1
        return DriftCheck(
            approx_loss=approx,
            true_loss=true_loss,
            rho=rho,
            reselect=self.quadratic.should_reselect(delta, true_loss, self.tau),
        )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue (the EMA and norms; the quadratic model is rebuilt on resume)."""
        return {
            "sq_ema": None if self._sq_ema is None else self._sq_ema.detach().cpu(),
            "ema_steps": self._ema_steps,
            "first_curvature_norm": self.first_curvature_norm,
            "curvature_norm": self.curvature_norm,
            "generator": self._gen.get_state(),
            "checks": self.checks,
            "selections": self.selections,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict` (call :meth:`reset` before the next check)."""
        ema = state.get("sq_ema")
        self._sq_ema = None if ema is None else ema.to(device)
        self._ema_steps = int(state.get("ema_steps", 0))
        self.first_curvature_norm = state.get("first_curvature_norm")
        self.curvature_norm = state.get("curvature_norm")
        if state.get("generator") is not None:
            self._gen.set_state(state["generator"])
        self.checks = int(state.get("checks", 0))
        self.selections = int(state.get("selections", 0))
        self.quadratic = None
        self._anchor = None
        self._check = None
