"""RS2 (no sample repeats before every sample was seen) and InfoBatch's pruning, rescaling and score table."""

from __future__ import annotations

import numpy as np
import pytest

from nessa.errors import InvalidArgumentError
from nessa.selection import SelectionInputs, create
from nessa.selection.infobatch import INITIAL_SCORE, InfoBatchScores, keep_ratio_of, prune


@pytest.mark.parametrize(("n", "k"), [(100, 10), (103, 10), (50, 7), (10, 10)])
def test_rs2_sees_every_sample_once_before_any_repeats_across_rounds(n: int, k: int) -> None:
    inputs = SelectionInputs(labels=np.zeros(n, dtype=np.int64))
    state: dict = {}
    rounds = []
    for r in range(3 * -(-n // k)):
        sel = create("rs2")  # a fresh instance per call with the session's state, as the daemon runs it
        sel.load_state_dict(state)
        got = sel.select(inputs, k, seed=1000 + r).indices
        state = sel.state_dict()
        assert len(got) == k and len(set(got.tolist())) == k  # a round never repeats a sample
        rounds.append(got)
    stream = np.concatenate(rounds)  # the rounds in order are whole permutations, one after another
    for c in range(stream.size // n):
        assert sorted(stream[c * n : (c + 1) * n].tolist()) == list(range(n))


def test_rs2_state_is_a_few_numbers_and_bad_state_is_refused() -> None:
    sel = create("rs2")
    sel.select(SelectionInputs(labels=np.zeros(40, dtype=np.int64)), 0.25, seed=3)
    assert set(sel.state_dict()) == {"n", "base_seed", "cycle", "cursor", "avoid", "head"}
    with pytest.raises(InvalidArgumentError, match="rs2"):
        create("rs2").load_state_dict({"n": 5, "base_seed": 1, "cycle": 0, "cursor": 9})


def test_infobatch_keeps_every_hard_sample_and_a_rescaled_share_of_the_learned_ones() -> None:
    scores = np.r_[np.full(60, 0.1), np.full(40, 2.0)].astype(np.float32)  # mean 0.86: 60 well learned
    idx, w = prune(scores, keep_ratio=0.5, seed=0)
    assert len(set(idx.tolist())) == idx.size == 40 + 30
    hard = idx >= 60
    assert hard.sum() == 40 and np.all(w[hard] == 1.0)
    assert np.allclose(w[~hard], 2.0)  # 1 / keep ratio: the expected gradient is unchanged
    expected = (w * scores[idx]).sum()  # the weighted sum estimates the full sum
    assert expected == pytest.approx(scores.sum(), rel=1e-6)
    again, _ = prune(scores, keep_ratio=0.5, seed=0)
    assert np.array_equal(idx, again)  # seeded


def test_infobatch_keep_ratio_and_score_table_follow_the_code() -> None:
    assert keep_ratio_of(0.5) == 0.5 and keep_ratio_of(0.95) == pytest.approx(0.1) and keep_ratio_of(0.0) == 1.0
    table = InfoBatchScores(5)
    assert np.all(table.scores == INITIAL_SCORE)
    table.update(np.array([1, 3]), np.array([0.2, 0.4]))
    assert table.scores.tolist() == pytest.approx([3.0, 0.2, 3.0, 0.4, 3.0])
    idx, w = prune(np.full(8, INITIAL_SCORE), 0.5, seed=1)  # nothing below the mean: everything, weight 1
    assert sorted(idx.tolist()) == list(range(8)) and np.all(w == 1.0)
    with pytest.raises(InvalidArgumentError, match="indices"):
        table.update(np.array([7]), np.array([1.0]))


def test_infobatch_selector_takes_losses_and_the_keep_ratio_as_its_budget() -> None:
    losses = np.r_[np.full(20, 0.1), np.full(20, 1.0)].astype(np.float32)
    sub = create("infobatch").select(SelectionInputs(labels=np.zeros(40, dtype=np.int64), losses=losses), 0.25)
    assert len(sub) == 20 + 5 and sub.extras["kept"] == 25
    with pytest.raises(InvalidArgumentError, match="keep ratio"):
        create("infobatch").select(SelectionInputs(labels=np.zeros(40, dtype=np.int64), losses=losses), 10)
