"""Dataset distillation next to the data: MTT, DM and progressive distillation (PDD) on 1-D signals.

Distillation needs backward passes, so it runs in torch on the storage node's CPU or GPU, not on the forward-only
OpenCL proxy engine. Typical use::

    from nessa.distill import distill
    result = distill(x, y, method="pdd", ipc=10, stages=5, seed=0)
    for stage in result.stages:            # stage.x (k, length), stage.y, stage.lr
        ...

See ``docs/distillation.md`` for the algorithms and how the stages are stored and trained on.
"""

from __future__ import annotations

from nessa.distill.dm import DMConfig, distribution_match
from nessa.distill.evaluate import SCHEDULES, train_stages
from nessa.distill.mtt import MatchResult, MTTConfig, match_trajectories
from nessa.distill.net import ConvNetSpec, embed, forward, init_params
from nessa.distill.pdd import METHODS, DistillOptions, DistillResult, Stage, distill, parse_options
from nessa.distill.train import TrainState, accuracy, train_expert, train_on

__all__ = [
    "METHODS",
    "SCHEDULES",
    "ConvNetSpec",
    "DMConfig",
    "DistillOptions",
    "DistillResult",
    "MTTConfig",
    "MatchResult",
    "Stage",
    "TrainState",
    "accuracy",
    "distill",
    "distribution_match",
    "embed",
    "forward",
    "init_params",
    "match_trajectories",
    "parse_options",
    "train_expert",
    "train_on",
    "train_stages",
]
