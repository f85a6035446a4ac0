"""The Selection record: its wire, disk and checkpoint forms round-trip every field."""

from __future__ import annotations

import json

import numpy as np

from nessa.records import Selection, Timings


def _selection() -> Selection:
    return Selection(
        id="sel-" + "ab" * 12,
        dataset="ds",
        method="craig",
        indices=np.array([5, 1, 9], dtype=np.int64),
        weights=np.array([1.5, 0.5, 1.0], dtype=np.float32),
        objective=12.5,
        proxy_version=3,
        timings=Timings(0.1, 0.2, 0.3, 0.7),
        class_counts={0: 2, 1: 1},
        num_candidates=30,
        selected_bytes=120,
        candidate_bytes=1200,
        budget_rule="equal",
        options={"optimizer": "lazy"},
        extras={"dropped_learned": 0},
        session="run-1",
        session_round=2,
    )


def _same(a: Selection, b: Selection) -> None:
    assert a.meta() == b.meta()
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.weights, b.weights)


def test_wire_round_trip_inline_and_not() -> None:
    sel = _selection()
    _same(Selection.from_pb(sel.to_pb(inline=True)), sel)
    bare = sel.to_pb(inline=False)
    assert len(bare.indices) == 0 and bare.size == 3
    _same(Selection.from_pb(bare, sel.indices, sel.weights), sel)


def test_disk_and_checkpoint_forms_round_trip() -> None:
    sel = _selection()
    meta = json.loads(json.dumps(sel.meta()))
    _same(Selection.from_meta(meta, sel.indices, sel.weights), sel)
    _same(Selection.from_state(sel.to_state()), sel)
    nan = Selection(id="x", dataset="d", method="random", indices=np.arange(2), weights=np.ones(2))
    assert np.isnan(Selection.from_meta(json.loads(json.dumps(nan.meta())), nan.indices, nan.weights).objective)


def test_a_part_has_no_id_and_its_own_slice() -> None:
    part = _selection().part(1, 3)
    assert part.id == "" and part.indices.tolist() == [1, 9] and part.weights.tolist() == [0.5, 1.0]
    assert _selection().with_reply_facts(cached=True).cached
