"""Distribution matching (DM, Zhao & Bilen, WACV 2023): the cheap single-stage baseline.

Each iteration draws a fresh randomly initialised ConvNet-1D (never trained) and, per class, matches the mean
embedding of a batch of real samples to the mean embedding of the class's synthetic samples:
loss = Σ_c ‖μ_real,c − μ_syn,c‖²; SGD on the samples (``lr_img``, momentum 0.5). No DSA augmentation here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nessa.distill.net import ConvNetSpec, embed, init_params
from nessa.errors import InvalidArgumentError

__all__ = ["DMConfig", "distribution_match"]


@dataclass(frozen=True)
class DMConfig:
    """Distribution-matching hyperparameters.

    Attributes:
        iterations: sample updates (each with a fresh random network).
        lr_img: step size of the sample updates.
        batch_real: real samples per class per iteration.
    """

    iterations: int = 1000
    lr_img: float = 1.0
    batch_real: int = 256

    def check(self) -> None:
        """Raise :class:`InvalidArgumentError` for a value that cannot run."""
        if self.iterations < 1 or self.batch_real < 1 or not self.lr_img > 0:
            raise InvalidArgumentError("DM needs iterations >= 1, batch_real >= 1 and lr_img > 0")


def distribution_match(
    spec: ConvNetSpec,
    x_real: torch.Tensor,
    y_real: torch.Tensor,
    x_init: torch.Tensor,
    y: torch.Tensor,
    config: DMConfig,
    generator: torch.Generator,
    *,
    tick: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise ``x_init`` (labels ``y``) so its per-class mean embeddings match the real data's.

    Returns:
        The distilled samples and the loss of every iteration.
    """
    config.check()
    syn = x_init.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=config.lr_img, momentum=0.5)
    classes = [int(c) for c in torch.unique(y)]
    by_class = {c: torch.nonzero(y_real == c).flatten() for c in classes}
    syn_of = {c: torch.nonzero(y == c).flatten() for c in classes}
    for c in classes:
        if len(by_class[c]) == 0:
            raise InvalidArgumentError(f"class {c} has synthetic samples but no real ones to match")
    losses: list[float] = []
    for it in range(config.iterations):
        net = init_params(spec, generator, x_real.device)
        loss = torch.zeros((), device=x_real.device)
        for c in classes:
            pool = by_class[c]
            pick = pool[torch.randperm(len(pool), generator=generator)[: config.batch_real]]
            with torch.no_grad():
                mu_real = embed(spec, net, x_real[pick]).mean(0)
            mu_syn = embed(spec, net, syn[syn_of[c]]).mean(0)
            loss = loss + ((mu_real - mu_syn) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if tick is not None:
            tick(it, losses[-1])
    return syn.detach().clone(), losses
