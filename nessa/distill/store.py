"""Distilled stages as stored datasets: ``NAME-s1`` … ``NAME-sP`` plus the group ``NAME``, published together.

Each stage is its own dataset holding only that stage's new samples; its manifest's ``source`` records
``distilled_from``, ``method``, ``stage`` (1-based), ``learned_lr`` and ``ipc`` (samples per class in the stage).
The group dataset ``NAME`` is the union of all stages in stage order (its ``stage`` column says which stage each
sample belongs to) and its manifest is the **group manifest**: ``stages`` lists the stage datasets in order with
their learned lrs, so the union of stages 1..i is the index prefix ``[0, offsets[i])`` of the group.

Everything is written through the store's staging writer and published all at once, the group last: a crash or a
cancelled job leaves no stage (nor half of one) under a final name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nessa.distill.pdd import DistillResult
from nessa.errors import FailedPreconditionError
from nessa.store import Manifest, ingest_splits, open_dataset
from nessa.store.writer import array_split

__all__ = ["GROUP_KIND", "STAGE_KIND", "StageInfo", "group_stages", "load_arrays", "stage_name", "write_distilled"]

#: ``source.kind`` of a group manifest and of a stage's manifest.
GROUP_KIND = "distilled-group"
STAGE_KIND = "distilled-stage"


def stage_name(group: str, stage: int) -> str:
    """The dataset name of stage ``stage`` (1-based) of group ``group``."""
    return f"{group}-s{stage}"


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """One entry of a group manifest: the stage's dataset, its learned lr and where it lies in the group."""

    name: str
    stage: int
    learned_lr: float
    count: int
    offset: int


def write_distilled(
    result: DistillResult,
    dest: Path | str,
    *,
    distilled_from: str,
    class_names: list[str] | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``result`` as the group ``dest`` and its stage datasets beside it; returns the paths (group first).

    Args:
        result: the distillation run.
        dest: the group's dataset directory (stages go to ``dest-s1`` …).
        distilled_from: the source dataset's name, recorded in every manifest.
        class_names: the source's class names (default ``"0"`` …).
        overwrite: replace an existing group and stages atomically.
        extra: more provenance for the group manifest (job id, seconds, real bytes read).
    """
    dest = Path(dest)
    group = dest.name
    num_classes = len(class_names) if class_names else int(max(int(s.y.max()) for s in result.stages)) + 1
    names = class_names or [str(i) for i in range(num_classes)]
    infos: list[dict[str, Any]] = []
    offset = 0
    per_stage = result.ipc_per_stage
    splits = []
    for i, st in enumerate(result.stages, start=1):
        infos.append(
            {"name": stage_name(group, i), "stage": i, "learned_lr": float(st.lr), "count": len(st.y), "offset": offset}
        )
        offset += len(st.y)
        source = {
            "kind": STAGE_KIND,
            "distilled_from": distilled_from,
            "method": result.method,
            "stage": i,
            "stages": len(result.stages),
            "learned_lr": float(st.lr),
            "ipc": per_stage,
            "group": group,
            "seed": result.seed,
        }
        splits.append(array_split(st.x.astype(np.float32), st.y, class_names=names, source=source, suffix=f"-s{i}"))
    group_source = {
        "kind": GROUP_KIND,
        "distilled_from": distilled_from,
        "method": result.method,
        "ipc": result.ipc,
        "ipc_per_stage": per_stage,
        "stages": infos,
        "learned_lr": [float(s.lr) for s in result.stages],
        "seed": result.seed,
        "options": dataclasses.asdict(result.options),
        **dict(extra or {}),
    }
    x_all = np.concatenate([s.x for s in result.stages]).astype(np.float32)
    y_all = np.concatenate([s.y for s in result.stages])
    stage_col = np.concatenate([np.full(len(s.y), i, np.int64) for i, s in enumerate(result.stages, start=1)])
    splits.insert(0, array_split(x_all, y_all, class_names=names, columns={"stage": stage_col}, source=group_source))
    return ingest_splits(splits, dest, overwrite=overwrite)


def group_stages(source: Mapping[str, Any], where: str = "dataset") -> list[StageInfo]:
    """The stages a group manifest's ``source`` lists, in order; raises if ``source`` is not a group manifest."""
    if source.get("kind") != GROUP_KIND or not isinstance(source.get("stages"), list):
        raise FailedPreconditionError(
            f"{where} is not a distilled group (its manifest has no stage list); give the group's name, e.g. the "
            "DEST of `nessa distill SOURCE DEST`"
        )
    return [
        StageInfo(str(s["name"]), int(s["stage"]), float(s["learned_lr"]), int(s["count"]), int(s["offset"]))
        for s in source["stages"]
    ]


def load_arrays(path: Path | str) -> tuple[np.ndarray, np.ndarray, Manifest]:
    """All samples, labels and the manifest of a stored raw dataset (for distillation's real-data input)."""
    with open_dataset(path) as ds:
        x = ds.read_arrays(np.arange(len(ds)))
        return np.array(x.reshape(len(ds), -1), dtype=np.float32), np.array(ds.labels), ds.manifest
