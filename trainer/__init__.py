"""The trainer process (installed as ``nessa.trainer``): models, epoch loop, checkpoints.

``nessa.trainer.fit(model, target, dataset, test_dataset, **config)`` trains a model instance of yours with it
(imported on first use).
"""

from __future__ import annotations

from typing import Any

__all__ = ["fit"]


def __getattr__(name: str) -> Any:
    if name == "fit":
        from nessa.trainer.loop import fit

        return fit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
