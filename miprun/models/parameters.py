"""Counting a model's parameters (tied weights once)."""

from __future__ import annotations

from typing import Any


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total
