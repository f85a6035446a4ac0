"""Trajectory matching (MTT, Cazenavette et al., CVPR 2022) on a flat-parameter ConvNet-1D.

Each iteration samples an expert and a start epoch ``t < max_start_epoch``, starts a student at the expert's
checkpoint θ*_t, takes ``syn_steps`` SGD steps on the synthetic samples with a *learnable* step size, and
minimises ‖θ_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖² (M = ``expert_epochs``), back-propagating through the
unrolled steps into the samples (SGD ``lr_img``, momentum 0.5) and the step size (SGD ``lr_lr``, momentum 0.5).

PDD's conditioning is the ``frozen`` argument: samples of earlier stages join every student batch but receive no
update (the released code zeroes their gradient; here they are simply not in the optimizer). Not carried over from
the image code: ZCA whitening, DSA augmentation, and choosing the best iteration by periodic evaluation (the
last iteration's samples and step size are returned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nessa.distill.net import ConvNetSpec, forward
from nessa.errors import InvalidArgumentError

__all__ = ["MTTConfig", "MatchResult", "match_trajectories"]


@dataclass(frozen=True)
class MTTConfig:
    """Trajectory-matching hyperparameters (defaults: the small-scale MNIST-1D setting of the design note).

    Attributes:
        iterations: matching iterations.
        syn_steps: unrolled student steps per iteration (N).
        expert_epochs: expert epochs the student must cover (M).
        max_start_epoch: start epochs are drawn from ``[0, max_start_epoch)``.
        lr_img: step size of the sample updates.
        lr_lr: step size of the learned-lr updates.
        lr_init: initial learned lr (MTT: ``lr_teacher``).
        batch_syn: synthetic samples per student step (0: all of them).
    """

    iterations: int = 300
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 3
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_init: float = 0.2
    batch_syn: int = 0

    def check(self) -> None:
        """Raise :class:`InvalidArgumentError` for a value that cannot run."""
        for name in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"MTT option {name} must be >= 1; got {getattr(self, name)}")
        for name in ("lr_img", "lr_lr", "lr_init"):
            if not getattr(self, name) > 0:
                raise InvalidArgumentError(f"MTT option {name} must be > 0; got {getattr(self, name)}")
        if self.batch_syn < 0:
            raise InvalidArgumentError(f"MTT option batch_syn must be >= 0; got {self.batch_syn}")

    @property
    def expert_length(self) -> int:
        """Epochs an expert trajectory must hold for these start epochs and spans."""
        return self.max_start_epoch + self.expert_epochs


@dataclass
class MatchResult:
    """What one trajectory-matching run produced.

    Attributes:
        x: the distilled (trainable) samples, shape (k, length).
        y: their labels.
        lr: the learned step size.
        losses: the normalised matching loss of every iteration.
    """

    x: torch.Tensor
    y: torch.Tensor
    lr: float
    losses: list[float] = field(default_factory=list)


def match_trajectories(
    spec: ConvNetSpec,
    trajectories: Sequence[Sequence[torch.Tensor]],
    x_init: torch.Tensor,
    y: torch.Tensor,
    config: MTTConfig,
    generator: torch.Generator,
    *,
    frozen_x: torch.Tensor | None = None,
    frozen_y: torch.Tensor | None = None,
    tick: Callable[[int, float], None] | None = None,
) -> MatchResult:
    """Optimise ``x_init`` (labels ``y``) and a step size so that training on them follows the expert trajectories.

    Args:
        spec: the network.
        trajectories: per expert, flat checkpoints per epoch (at least ``config.expert_length + 1`` of them).
        x_init: initial synthetic samples (usually real samples of each class).
        y: their labels.
        config: hyperparameters.
        generator: all sampling (expert, start epoch, batches) draws from it.
        frozen_x: samples of earlier stages, in every student batch but never updated (PDD conditioning).
        frozen_y: their labels.
        tick: called after every iteration with (iteration, loss); may raise to stop the run.
    """
    config.check()
    if not trajectories:
        raise InvalidArgumentError("trajectory matching needs at least one expert trajectory")
    short = min(len(t) for t in trajectories)
    if short < config.expert_length + 1:
        raise InvalidArgumentError(
            f"expert trajectories hold {short} checkpoints; max_start_epoch + expert_epochs = "
            f"{config.expert_length} needs {config.expert_length + 1}"
        )
    syn_x = x_init.detach().clone().requires_grad_(True)
    syn_lr = torch.tensor(float(config.lr_init), device=x_init.device, requires_grad=True)
    opt_x = torch.optim.SGD([syn_x], lr=config.lr_img, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=config.lr_lr, momentum=0.5)
    fx = frozen_x.detach() if frozen_x is not None else x_init[:0].detach()
    fy = frozen_y if frozen_y is not None else y[:0]
    all_y = torch.cat([fy, y])
    total = len(all_y)
    batch = config.batch_syn or total
    losses: list[float] = []
    for it in range(config.iterations):
        e = int(torch.randint(len(trajectories), (1,), generator=generator))
        t = int(torch.randint(config.max_start_epoch, (1,), generator=generator))
        start = trajectories[e][t]
        target = trajectories[e][t + config.expert_epochs]
        all_x = torch.cat([fx, syn_x])
        student = start.clone().requires_grad_(True)
        for _ in range(config.syn_steps):
            idx = torch.randperm(total, generator=generator)[:batch]
            ce = F.cross_entropy(forward(spec, student, all_x[idx]), all_y[idx])
            (grad,) = torch.autograd.grad(ce, student, create_graph=True)
            student = student - syn_lr * grad
        loss = ((student - target) ** 2).sum() / ((start - target) ** 2).sum().clamp_min(1e-12)
        opt_x.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        loss.backward()
        opt_x.step()
        opt_lr.step()
        value = float(loss.detach())
        if value != value:  # NaN: the samples or the step size diverged
            raise InvalidArgumentError(
                f"trajectory matching diverged at iteration {it} (loss NaN); lower lr_img or lr_lr"
            )
        losses.append(value)
        if tick is not None:
            tick(it, value)
    return MatchResult(syn_x.detach().clone(), y.clone(), float(syn_lr.detach()), losses)
