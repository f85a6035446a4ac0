"""Records that cross a boundary: each owns its wire (protobuf), disk and checkpoint forms.

:class:`Selection` is the one record of a selection — made by the daemon, sent in a ``Select`` reply, saved in the
daemon's state directory, held by the client, streamed by the data path and saved in a trainer's checkpoint.
Adding a field touches ``proto/nessa/v1/storage.proto`` and this module only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from nessa.v1 import storage_pb2 as pb

__all__ = ["Selection", "Timings"]


@dataclass(frozen=True)
class Timings:
    """Where a selection's time went on the daemon, in seconds (mirrors ``nessa.v1.Timings``)."""

    read_seconds: float = 0.0
    proxy_forward_seconds: float = 0.0
    selection_seconds: float = 0.0
    total_seconds: float = 0.0

    def to_pb(self) -> pb.Timings:
        """The protobuf message."""
        return pb.Timings(**self.as_dict())

    @classmethod
    def from_pb(cls, msg: pb.Timings) -> Timings:
        """Build from the protobuf message."""
        return cls(**{f.name: float(getattr(msg, f.name)) for f in fields(cls)})

    def as_dict(self) -> dict[str, float]:
        """``{name: seconds}`` (JSON-able)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timings:
        """Build from :meth:`as_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names})


@dataclass
class Selection:
    """A weighted subset of a dataset chosen by a daemon.

    Attributes:
        id: names the selection for streaming (``sel-`` and 24 hex digits; the same request on the same proxy gives
            the same id).
        dataset: dataset name.
        method: selector name.
        indices: int64 dataset indices, in the method's order.
        weights: float32 weight per index.
        objective: the method's objective (NaN if none).
        proxy_version: proxy version used, or ``None``.
        timings: where the daemon's time went.
        class_counts: label → samples selected.
        num_candidates: candidates considered.
        selected_bytes: stored bytes of the selection (what streaming it moves as payload).
        candidate_bytes: stored bytes of all candidates (a full epoch's payload).
        budget_rule: how the budget was spread.
        options: options used (defaults filled in).
        extras: method-specific outputs.
        session: the selection session whose selector state was used and updated ("" for a stateless selection).
        session_round: calls of that session (dataset, method) so far, this one included (0 when stateless).
        cached: the daemon returned a selection it had made before for the same request (reply only).
        metadata_bytes: bytes the reply (and the index fetch, for large ones) took on the wire (client only).
    """

    id: str
    dataset: str
    method: str
    indices: np.ndarray
    weights: np.ndarray
    objective: float = float("nan")
    proxy_version: int | None = None
    timings: Timings = field(default_factory=Timings)
    class_counts: dict[int, int] = field(default_factory=dict)
    num_candidates: int = 0
    selected_bytes: int = 0
    candidate_bytes: int = 0
    budget_rule: str = "global"
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    session: str = ""
    session_round: int = 0
    cached: bool = False
    metadata_bytes: int = 0

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.weights = np.asarray(self.weights, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def fraction(self) -> float:
        """Selected samples over candidates."""
        return len(self.indices) / self.num_candidates if self.num_candidates else float("nan")

    @property
    def nbytes(self) -> int:
        """Memory held (indices, weights, and a flat allowance for the rest)."""
        return int(self.indices.nbytes + self.weights.nbytes + 1024)

    def part(self, start: int, stop: int) -> Selection:
        """Positions ``start:stop`` of this selection as a record without an id (streamed by its indices)."""
        return replace(self, id="", indices=self.indices[start:stop], weights=self.weights[start:stop])

    def with_reply_facts(self, *, cached: bool = False, metadata_bytes: int = 0) -> Selection:
        """A copy carrying the facts of one reply (whether it was cached, what it cost on the wire)."""
        return replace(self, cached=cached, metadata_bytes=metadata_bytes)

    # -- wire ----------------------------------------------------------------------------------------------------

    def to_pb(self, *, inline: bool) -> pb.Selection:
        """The ``Select`` reply; with ``inline=False`` indices and weights are left out (streamed on request)."""
        msg = pb.Selection(
            id=self.id,
            dataset=self.dataset,
            method=self.method,
            objective=self.objective,
            timings=self.timings.to_pb(),
            class_counts=self.class_counts,
            num_candidates=self.num_candidates,
            size=len(self),
            selected_bytes=self.selected_bytes,
            candidate_bytes=self.candidate_bytes,
            inline=inline,
            cached=self.cached,
            options_json=json.dumps(self.options, sort_keys=True),
            extras_json=json.dumps(self.extras, sort_keys=True),
            budget_rule=self.budget_rule,
            session=self.session,
            session_round=self.session_round,
        )
        if inline:
            msg.indices.extend(self.indices.tolist())
            msg.weights.extend(self.weights.tolist())
        if self.proxy_version is not None:
            msg.proxy_version = self.proxy_version
        return msg

    @classmethod
    def from_pb(
        cls,
        msg: pb.Selection,
        indices: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        *,
        metadata_bytes: int = 0,
    ) -> Selection:
        """Build from a reply; ``indices``/``weights`` when the reply was not inline (fetched separately)."""
        return cls(
            id=msg.id,
            dataset=msg.dataset,
            method=msg.method,
            indices=np.asarray(msg.indices if indices is None else indices, dtype=np.int64),
            weights=np.asarray(msg.weights if weights is None else weights, dtype=np.float32),
            objective=float(msg.objective),
            proxy_version=int(msg.proxy_version) if msg.HasField("proxy_version") else None,
            timings=Timings.from_pb(msg.timings),
            class_counts={int(k): int(v) for k, v in msg.class_counts.items()},
            num_candidates=int(msg.num_candidates),
            selected_bytes=int(msg.selected_bytes),
            candidate_bytes=int(msg.candidate_bytes),
            budget_rule=msg.budget_rule,
            options=json.loads(msg.options_json or "{}"),
            extras=json.loads(msg.extras_json or "{}"),
            session=msg.session,
            session_round=int(msg.session_round),
            cached=bool(msg.cached),
            metadata_bytes=int(metadata_bytes),
        )

    # -- disk and checkpoints ------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Every field but the arrays and the per-reply facts, JSON-able."""
        return {
            "id": self.id,
            "dataset": self.dataset,
            "method": self.method,
            "objective": self.objective if math.isfinite(self.objective) else None,
            "proxy_version": self.proxy_version,
            "timings": self.timings.as_dict(),
            "class_counts": {str(k): int(v) for k, v in self.class_counts.items()},
            "num_candidates": int(self.num_candidates),
            "selected_bytes": int(self.selected_bytes),
            "candidate_bytes": int(self.candidate_bytes),
            "budget_rule": self.budget_rule,
            "options": self.options,
            "extras": self.extras,
            "session": self.session,
            "session_round": int(self.session_round),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], indices: np.ndarray, weights: np.ndarray) -> Selection:
        """Rebuild from :meth:`meta` and the arrays."""
        objective = meta.get("objective")
        return cls(
            id=meta["id"],
            dataset=meta["dataset"],
            method=meta["method"],
            indices=indices,
            weights=weights,
            objective=float("nan") if objective is None else float(objective),
            proxy_version=None if meta.get("proxy_version") is None else int(meta["proxy_version"]),
            timings=Timings.from_dict(meta.get("timings", {})),
            class_counts={int(k): int(v) for k, v in meta.get("class_counts", {}).items()},
            num_candidates=int(meta.get("num_candidates", 0)),
            selected_bytes=int(meta.get("selected_bytes", 0)),
            candidate_bytes=int(meta.get("candidate_bytes", 0)),
            budget_rule=meta.get("budget_rule", "global"),
            options=dict(meta.get("options", {})),
            extras=dict(meta.get("extras", {})),
            session=str(meta.get("session", "")),
            session_round=int(meta.get("session_round", 0)),
        )

    def to_state(self) -> dict[str, Any]:
        """Checkpoint form: ``{"meta": JSON-able dict, "indices": int64 array, "weights": float32 array}``."""
        return {"meta": self.meta(), "indices": self.indices.copy(), "weights": self.weights.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Selection:
        """Rebuild from :meth:`to_state` (arrays may come back as tensors: anything ``np.asarray`` takes)."""
        return cls.from_meta(state["meta"], np.asarray(state["indices"]), np.asarray(state["weights"]))
