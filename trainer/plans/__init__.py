"""Training plans, chosen by name (one module per plan; a new training mode is one new module).

``epoch``: select a weighted subset every ``reselect_every`` epochs, pipelined, and train on it; ``full``: every
sample, every epoch; ``crest``: mini-batch coresets reselected when CREST's quadratic loss model drifts;
``partitions``: NeSSA's partition mode, one mini-batch coreset per random partition and one step on each;
``infobatch``: InfoBatch's pruning of well-learned samples by the trainer's own losses;
``progressive``: PDD's progressive training on the stages of a distilled group.
"""

from __future__ import annotations

from nessa.errors import InvalidArgumentError
from nessa.trainer.plans.base import Plan
from nessa.trainer.plans.crest import CrestPlan
from nessa.trainer.plans.epoch import EpochPlan, FullPlan
from nessa.trainer.plans.infobatch import InfoBatchPlan
from nessa.trainer.plans.partitions import PartitionPlan
from nessa.trainer.plans.progressive import ProgressivePlan

__all__ = ["PLANS", "Plan", "plan_for"]

#: Plan name → class.
PLANS: dict[str, type[Plan]] = {
    cls.name: cls for cls in (EpochPlan, FullPlan, CrestPlan, PartitionPlan, InfoBatchPlan, ProgressivePlan)
}
#: Methods that train under a plan of their own (every other selector runs under ``epoch``).
_METHOD_PLANS = {"full": "full", "crest": "crest", "infobatch": "infobatch"}


def plan_for(method: str, plan: str = "") -> type[Plan]:
    """The plan class for ``method`` (``plan`` names one explicitly; "" picks the method's own or ``epoch``)."""
    name = plan or _METHOD_PLANS.get(method, "epoch")
    if name not in PLANS:
        raise InvalidArgumentError(f"unknown training plan {name!r}; choose one of: {', '.join(sorted(PLANS))}")
    return PLANS[name]
