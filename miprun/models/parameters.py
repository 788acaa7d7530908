"""Counting a model's parameters (tied weights once)."""

from __future__ import annotations

from typing import Any


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied weights counted once; a meta tensor — a block of a
    layer-wise model not loaded now — counts by its shape)."""
    seen, total = set(), 0
    for p in model.parameters():
        key = ("meta", id(p)) if p.is_meta else p.data_ptr()
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total
