"""The learning-rate schedule, stated per optimizer step in units of epoch progress.

The learning rate is a pure function of *training progress* ``p``, measured in epochs and advanced every
optimizer step: during epoch ``e`` (0-based) with ``n_e`` steps, step ``i`` (0-based) runs at
``p = e + i / n_e``. A linear warm-up from ``base_lr * warmup_start_factor`` to ``base_lr`` over the first
``warmup_epochs`` is followed by a cosine decay to ``base_lr * final_lr_factor`` at ``p = epochs``.

Why progress and not a fixed number of steps: a 10 % selection gives epochs of a tenth of the steps. A schedule
counted in full-data steps would leave such a run at the top of its cosine after all its epochs; a schedule
counted in this run's steps (fixed in advance) breaks when epoch sizes vary (CREST, per-class rounding, a resumed
epoch). Counting progress per step inside each epoch gives every method the *same* schedule over the same
number of epochs (as the CRAIG and CREST code do with their "epochs" of ``train_frac`` of the data), updated
smoothly at every step whatever an epoch's size. Because the rate is a function of ``(epoch, step, steps in the
epoch)`` only, it needs no state of its own in a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nessa.errors import InvalidArgumentError

__all__ = ["LRSchedule"]


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up then cosine decay, as a function of epoch progress.

    Attributes:
        base_lr: peak learning rate (reached at the end of the warm-up).
        epochs: the run's number of epochs (where the cosine ends).
        warmup_epochs: length of the linear warm-up, in epochs (0 disables it); at most ``epochs``.
        warmup_start_factor: the warm-up starts at ``base_lr * warmup_start_factor``.
        final_lr_factor: the cosine ends at ``base_lr * final_lr_factor``.
    """

    base_lr: float
    epochs: int
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.1
    final_lr_factor: float = 0.0

    def __post_init__(self) -> None:
        if not (self.base_lr > 0 and math.isfinite(self.base_lr)):
            raise InvalidArgumentError(f"learning rate must be a positive number; got {self.base_lr}")
        if self.epochs < 1:
            raise InvalidArgumentError(f"epochs must be >= 1; got {self.epochs}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise InvalidArgumentError(f"warm-up epochs must be in [0, epochs={self.epochs}]; got {self.warmup_epochs}")
        if not 0 < self.warmup_start_factor <= 1:
            raise InvalidArgumentError(f"warmup_start_factor must be in (0, 1]; got {self.warmup_start_factor}")
        if not 0 <= self.final_lr_factor <= 1:
            raise InvalidArgumentError(f"final_lr_factor must be in [0, 1]; got {self.final_lr_factor}")

    @staticmethod
    def progress(epoch: int, step: int, steps_in_epoch: int) -> float:
        """Epoch progress of step ``step`` (0-based) of epoch ``epoch`` (0-based) that has ``steps_in_epoch``."""
        if steps_in_epoch < 1:
            raise InvalidArgumentError(f"an epoch needs at least one step; got {steps_in_epoch}")
        if not 0 <= step < steps_in_epoch:
            raise InvalidArgumentError(f"step {step} is outside the epoch's {steps_in_epoch} steps")
        return epoch + step / steps_in_epoch

    def lr_at(self, progress: float) -> float:
        """The learning rate at epoch progress ``progress`` (clamped to ``[0, epochs]``)."""
        p = min(max(progress, 0.0), float(self.epochs))
        if self.warmup_epochs > 0 and p < self.warmup_epochs:
            start = self.base_lr * self.warmup_start_factor
            return start + (self.base_lr - start) * (p / self.warmup_epochs)
        span = self.epochs - self.warmup_epochs
        t = 1.0 if span <= 0 else (p - self.warmup_epochs) / span
        low = self.base_lr * self.final_lr_factor
        return low + (self.base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * t))

    def lr_for_step(self, epoch: int, step: int, steps_in_epoch: int) -> float:
        """The learning rate for step ``step`` of epoch ``epoch`` (see :meth:`progress`)."""
        return self.lr_at(self.progress(epoch, step, steps_in_epoch))
