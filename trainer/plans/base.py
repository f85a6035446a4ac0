"""What a training plan is: the part of a run that decides what to train on, batch by batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from nessa.trainer.loop import Trainer
    from nessa.trainer.meter import EpochState

__all__ = ["Plan"]


class Plan(ABC):
    """Drives the epochs of one run through the :class:`~nessa.trainer.loop.Trainer`'s services.

    A plan asks the daemon for selections, streams them through the data path (:meth:`Trainer.stream`), and
    calls :meth:`Trainer.train_step` per batch and :meth:`Trainer.end_epoch` per epoch; its own resumable state
    goes into every checkpoint through :meth:`state_dict`.
    """

    #: The name the registry knows the plan by.
    name: ClassVar[str]

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    @abstractmethod
    def run(self, start_epoch: int, current: EpochState | None, saved: dict[str, Any] | None) -> None:
        """Train epochs ``start_epoch ..`` (resuming ``current`` mid-epoch, with the plan state ``saved``)."""

    def state_dict(self) -> dict[str, Any]:
        """The plan's own state for a checkpoint (numpy arrays and bytes allowed)."""
        return {}

    def steps_per_epoch(self) -> int:
        """Optimizer steps of one epoch (for the schedule and the progress bar)."""
        t = self.trainer
        return max(1, -(-t.epoch_samples() // t.config.batch_size))
