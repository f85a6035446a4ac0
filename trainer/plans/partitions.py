"""NeSSA's partition mode, as NeSSA's code runs it: one mini-batch coreset per random partition, one step each.

Each epoch has ``ceil(fraction · N / batch_size)`` steps. For step ``j`` a random class-balanced partition of
about ``batch_size / fraction`` samples is drawn (seeded by the run's seed, the epoch and ``j``; partitions are
independent, as in ``nehaprakriya/Near-SSD-Data-Selection`` ``train_resnet.py``), the daemon selects
``batch_size`` of them with the method (default options: submodlib's exponential kernel and weight rule, the code's
choice; CRAIG's per-class ``equal`` rule rounds up, as the code's ``equal_num`` does), and the trainer takes one SGD
step on exactly that coreset. The proxy is re-exported and pushed every
``partition_refresh`` steps (1: before every partition, as the code re-quantizes). NeSSA's code trains unweighted;
set ``weighted=False`` to match it (the default keeps the coreset weights). Selections are not pipelined: each
partition's coreset depends on the model the previous step produced, so their time is data wait.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nessa.errors import InvalidArgumentError
from nessa.order import epoch_seed
from nessa.records import Selection
from nessa.trainer.meter import EpochState
from nessa.trainer.plans.base import Plan

__all__ = ["PartitionPlan", "class_balanced_partition"]

#: Options the plan gives the selector unless the run sets them (NeSSA's code: submodlib's kernel and rule).
DEFAULT_OPTIONS = {"similarity": "exp", "weight_rule": "submodlib"}


def class_balanced_partition(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` random indices with (as far as the classes allow) the same count from every class, sorted."""
    classes = np.unique(labels)
    if size >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    members = {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    share, left = divmod(size, len(classes))
    take = {c: min(len(m), share + (1 if i < left else 0)) for i, (c, m) in enumerate(members.items())}
    short = size - sum(take.values())
    for c, m in members.items():  # hand what small classes cannot give to the others
        extra = min(short, len(m) - take[c])
        take[c] += extra
        short -= extra
    return np.sort(np.concatenate([m[: take[c]] for c, m in members.items()])).astype(np.int64)


class PartitionPlan(Plan):
    """NeSSA's partition (PA) mode; see the module docstring."""

    name = "partitions"

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        if trainer.config.partition_refresh < 1:
            raise InvalidArgumentError(f"partition_refresh must be >= 1; got {trainer.config.partition_refresh}")

    def run(self, start_epoch: int, current: EpochState | None, saved: dict[str, Any] | None) -> None:
        """Train epochs ``start_epoch ..``, one partition coreset per step."""
        t = self.trainer
        cfg = t.config
        steps = self.steps_per_epoch()
        size = min(t.info.num_samples, max(cfg.batch_size, round(cfg.batch_size / cfg.fraction)))
        labels = t.labels()
        version: int | None = None
        for epoch in range(start_epoch, cfg.epochs):
            if t.stop_requested:
                break
            state = current if current is not None and current.epoch == epoch else EpochState(epoch=epoch)
            current = None
            t0 = time.perf_counter()
            sel: Selection | None = None
            while state.step < steps:
                started = time.perf_counter()
                global_step = epoch * steps + state.step
                if t.needs_proxy and (version is None or global_step - version >= cfg.partition_refresh):
                    t.push_proxy(t.export_proxy(global_step))
                    version = global_step
                rng = np.random.default_rng(epoch_seed(cfg.seed, global_step))
                part = class_balanced_partition(labels, size, rng)
                sel = t.select(
                    method=cfg.method,
                    count=min(cfg.batch_size, len(part)),
                    seed=epoch_seed(cfg.seed, global_step),
                    proxy_version=version if t.needs_proxy else None,
                    options={**DEFAULT_OPTIONS, **cfg.options},
                    candidates=part,
                )
                t.meter.wait(state, time.perf_counter() - started, selection=True)
                t.log_selection(epoch, sel, step=state.step)
                state.selected_bytes += sel.selected_bytes
                state.subset_size += len(sel)
                with t.stream(sel, epoch, batch_size=len(sel)) as batches:  # the whole coreset: one step
                    for batch in batches:
                        t.meter.wait(state, batches.last_wait)
                        t.train_step(batch, state, steps)
                t0 = t.maybe_checkpoint_mid(state, sel, {}, t0)
            state.seconds += time.perf_counter() - t0
            assert sel is not None  # steps >= 1
            t.end_epoch(state, sel, {})
