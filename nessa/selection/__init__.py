"""Selectors over per-sample features: ``create(name, **options).select(inputs, budget, seed)``."""

from __future__ import annotations

from nessa.selection.base import Budget, SelectionInputs, Selector, Subset

__all__ = ["Budget", "SelectionInputs", "Selector", "Subset"]
