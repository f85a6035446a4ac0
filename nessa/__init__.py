"""NeSSA: near-storage data selection for training ML models.

Training sets sit on storage nodes; a compact int8 copy of the model being trained (the *proxy*) runs next to
the data, a selector picks a weighted subset, and only that subset crosses the link to the trainer.

Sub-packages:
    nessa.store      LMDB-sharded dataset format (ingest, read, verify).
    nessa.accel      OpenCL host runtime and kernels (PoCL on the CPU, xclbin on a SmartSSD), numpy references.
    nessa.proxy      the int8 model-proxy format, export from torch, and the engines that run it.
    nessa.selection  selectors (CRAIG, AdaCore, CREST, SAS, ClipCov, ...) over per-sample features.
    nessa.Selector   per-epoch selection for your own model and training loop (:mod:`nessa.selector`).
    nessa.cli        the ``nessa`` command (the composition root: the only part that imports services/trainer).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# torch DataLoader workers fork the process, often after it used a gRPC channel (a Select before the loop); without
# gRPC's fork handlers a forked child can hang opening its own channel (grpc/grpc#13873, #19158). gRPC reads this
# when it is first imported, so it must be set before: importing nessa first does it (set it to "false" to opt out).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "true")

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nessa.selector import Selector, weighted_loss

__all__ = ["Selector", "__version__", "weighted_loss"]


def __getattr__(name: str) -> Any:
    # The selection helper pulls in gRPC and the proxy exporter: import it only when asked for.
    if name in ("Selector", "weighted_loss"):
        from nessa import selector

        return getattr(selector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
