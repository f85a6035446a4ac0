from __future__ import annotations

import numpy as np
import pytest

from nessa.errors import InvalidArgumentError
from nessa.trainer.plans import PLANS, plan_for
from nessa.trainer.plans.partitions import class_balanced_partition


def test_plans_are_chosen_by_name_and_methods_default_to_their_own() -> None:
    assert set(PLANS) == {"epoch", "full", "crest", "partitions", "infobatch", "progressive"}
    assert plan_for("infobatch").name == "infobatch" and plan_for("rs2").name == "epoch"
    assert plan_for("craig").name == "epoch" and plan_for("full").name == "full"
    assert plan_for("crest").name == "crest" and plan_for("craig", "partitions").name == "partitions"
    assert plan_for("full", "progressive").name == "progressive"
    with pytest.raises(InvalidArgumentError, match="unknown training plan"):
        plan_for("craig", "nope")


@pytest.mark.parametrize(("counts", "size"), [([100] * 10, 320), ([5, 200, 200], 90), ([3, 3, 500], 100)])
def test_class_balanced_partition_has_the_size_and_equal_shares_where_classes_allow(
    counts: list[int], size: int
) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    part = class_balanced_partition(labels, size, np.random.default_rng(0))
    assert len(part) == size == len(np.unique(part))
    got = np.bincount(labels[part], minlength=len(counts))
    fair = size // len(counts)
    for c, n in enumerate(counts):
        assert got[c] == n if n < fair else got[c] >= fair
    again = class_balanced_partition(labels, size, np.random.default_rng(0))
    assert np.array_equal(part, again)  # seeded
