"""NeSSA: near-storage data selection for training ML models.

Training sets sit on storage nodes; a compact int8 copy of the model being trained (the *proxy*) runs next to
the data, a selector picks a weighted subset, and only that subset crosses the link to the trainer.

Sub-packages:
    nessa.store      LMDB-sharded dataset format (ingest, read, verify).
    nessa.accel      OpenCL host runtime and kernels (PoCL on the CPU, xclbin on a SmartSSD), numpy references.
    nessa.proxy      the int8 model-proxy format, export from torch, and the engines that run it.
    nessa.selection  selectors (CRAIG, AdaCore, CREST, SAS, ClipCov, ...) over per-sample features.
    nessa.cli        the ``nessa`` command (the composition root: the only part that imports services/trainer).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
