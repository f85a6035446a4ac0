"""Selectors over per-sample features: ``create(name, **options).select(inputs, budget, seed)``.

``available()`` lists every method (discovered automatically from the modules of this package) with its options,
required inputs and description. The facility-location engine is :func:`nessa.selection.facility_location.maximize`.
"""

from __future__ import annotations

from nessa.selection.base import Budget, SelectionInputs, Selector, Subset
from nessa.selection.registry import available, create, register

__all__ = ["Budget", "SelectionInputs", "Selector", "Subset", "available", "create", "register"]
