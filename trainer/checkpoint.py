"""Atomic training checkpoints: one file per run directory, replaced whole or not at all.

A checkpoint is a dictionary of plain values and tensors (model and optimizer state dicts, the epoch and the
position inside it, the selection being streamed, RNG states, the per-epoch history). It is written to a
temporary file in the same directory, flushed and fsynced, then renamed over ``checkpoint.pt`` and the directory
fsynced, so a ``kill -9`` at any moment leaves either the previous checkpoint or the new one, never a torn file.
Loading uses ``torch.load(weights_only=True)``: no pickled code runs, which is why numpy arrays are stored as
tensors and RNG states as tensors and tuples of ints.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nessa.errors import DataCorruptionError, InvalidArgumentError

__all__ = [
    "CHECKPOINT_NAME",
    "capture_rng_state",
    "checkpoint_path",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

#: File name of a run's checkpoint inside its checkpoint directory.
CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(directory: str | os.PathLike[str]) -> Path:
    """Path of the checkpoint file inside ``directory``."""
    return Path(directory) / CHECKPOINT_NAME


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically as the checkpoint of ``directory`` (created if missing).

    Args:
        directory: the run's checkpoint directory.
        payload: tensors, state dicts and plain Python values (what ``torch.load(weights_only=True)`` accepts).

    Returns:
        The path of the checkpoint file.
    """
    target_dir = Path(directory)
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / CHECKPOINT_NAME
    fd, tmp_name = tempfile.mkstemp(prefix=f".{CHECKPOINT_NAME}.", suffix=".tmp", dir=target_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target_dir)
    return final


def load_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Load the checkpoint of ``directory``, or ``None`` when there is none yet.

    Tensors are loaded onto the CPU; the caller moves them where they belong.

    Raises:
        DataCorruptionError: the file exists but cannot be read as a checkpoint.
    """
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataCorruptionError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to start the run over, "
            "or point --checkpoint-dir at another directory"
        ) from exc
    if not isinstance(payload, dict):
        raise DataCorruptionError(f"checkpoint {path} does not hold a dictionary; delete it to start over")
    return payload


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, numpy's legacy and torch's (CPU and CUDA) random generators."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))  # noqa: NPY002 - the global legacy generator
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`capture_rng_state`."""
    try:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npst = state["numpy"]
        np.random.set_state(  # noqa: NPY002
            (
                npst["name"],
                npst["keys"].numpy().astype(np.uint32),
                npst["pos"],
                npst["has_gauss"],
                npst["cached_gaussian"],
            )
        )
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InvalidArgumentError(f"checkpoint RNG state is malformed ({exc}); start the run over") from exc
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
