"""A run's checkpoint payload: what is saved to resume exactly, and the checks before resuming.

The payload is plain values and tensors (``torch.load(weights_only=True)`` runs no pickled code), so numpy arrays
and bytes are stored as tensors: :func:`to_tensors` / :func:`from_tensors` convert a nested structure both ways.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nessa.errors import FailedPreconditionError
from nessa.records import Selection
from nessa.trainer.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from nessa.trainer.config import TrainConfig
from nessa.trainer.meter import EpochState

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "from_tensors", "to_tensors"]

#: Version of the checkpoint payload layout.
CHECKPOINT_FORMAT = 2


def to_tensors(value: Any) -> Any:
    """``value`` with numpy arrays as tensors and ``bytes`` as uint8 tensors tagged ``{"__bytes__": t}``."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, bytes | bytearray):
        return {"__bytes__": torch.frombuffer(bytearray(value), dtype=torch.uint8).clone()}
    if isinstance(value, dict):
        return {k: to_tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_tensors(v) for v in value)
    return value


def from_tensors(value: Any) -> Any:
    """Undo :func:`to_tensors` (tensors become numpy arrays)."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return bytes(value["__bytes__"].numpy().tobytes())
        return {k: from_tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(from_tensors(v) for v in value)
    return value


class Checkpoint:
    """Saves and restores one run's state in ``config.checkpoint_dir`` (nothing when it is ``None``)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.directory = config.checkpoint_dir

    def save(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        next_epoch: int,
        current: EpochState | None,
        selection: Selection | None,
        plan_state: dict[str, Any],
        history: list[dict[str, Any]],
        totals: dict[str, float],
        finished: bool = False,
    ) -> None:
        """Write the checkpoint atomically."""
        if not self.directory:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.resume_key(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "next_epoch": next_epoch,
            "current": None if current is None else asdict(current),
            "selection": None if selection is None else to_tensors(selection.to_state()),
            "plan": to_tensors(plan_state),
            "history": history,
            "totals": dict(totals),
            "rng": capture_rng_state(),
            "finished": finished,
        }
        save_checkpoint(self.directory, payload)

    def load(self) -> dict[str, Any] | None:
        """The saved payload of this run (checked against the config), or ``None`` when there is none.

        Raises:
            FailedPreconditionError: a checkpoint of another format or of a run with other settings.
        """
        if not self.directory:
            return None
        ckpt = load_checkpoint(self.directory)
        if ckpt is None:
            return None
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise FailedPreconditionError(
                f"checkpoint in {self.directory} has format {ckpt.get('format')}, this trainer writes "
                f"{CHECKPOINT_FORMAT}; use another --checkpoint-dir"
            )
        theirs, ours = ckpt.get("config", {}), self.config.resume_key()
        diff = sorted(k for k in ours if theirs.get(k) != ours[k])
        if diff:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} → {ours[k]!r}" for k in diff)
            raise FailedPreconditionError(
                f"checkpoint in {self.directory} is of another run ({detail}); use a new --checkpoint-dir "
                "or the same settings"
            )
        return ckpt

    @staticmethod
    def restore(ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the model, optimizer and RNG states of ``ckpt``."""
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"])

    @staticmethod
    def selection(ckpt: dict[str, Any]) -> Selection | None:
        """The selection being trained on when the checkpoint was taken."""
        state = ckpt.get("selection")
        return None if state is None else Selection.from_state(from_tensors(state))

    @staticmethod
    def plan_state(ckpt: dict[str, Any]) -> dict[str, Any]:
        """The plan's state (and the trainer's selection log) saved in ``ckpt``."""
        return dict(from_tensors(ckpt.get("plan") or {}))

    @staticmethod
    def current(ckpt: dict[str, Any]) -> EpochState | None:
        """The epoch in progress, or ``None`` at an epoch boundary."""
        cur = ckpt.get("current")
        return None if cur is None else EpochState(**cur)

    @staticmethod
    def exists(directory: str | None) -> bool:
        """Whether ``directory`` holds a checkpoint."""
        return bool(directory) and (Path(str(directory)) / "checkpoint.pt").is_file()
