"""Selectors over per-sample features: ``create(name, **options).select(inputs, budget, seed)``.

``available()`` lists every method (discovered automatically from the modules of this package) with its options
(defaults and specs, from each method's typed ``Options`` dataclass, :func:`options_class`), required inputs and
description; :func:`required_inputs` gives the inputs a method needs with given options, and
:func:`select_with_budget_rule` runs a method under a ``budget_rule`` (one selector per class for a per-class
rule). The facility-location engine is :func:`nessa.selection.facility_location.maximize`.
"""

from __future__ import annotations

from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.budget import BUDGET_RULES, select_with_budget_rule
from nessa.selection.options import Options
from nessa.selection.registry import available, create, options_class, register, required_inputs

__all__ = [
    "BUDGET_RULES",
    "Budget",
    "Options",
    "SelectionInputs",
    "Selector",
    "Subset",
    "available",
    "create",
    "options_class",
    "register",
    "required_inputs",
    "select_with_budget_rule",
]
