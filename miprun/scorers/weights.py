"""Helpers shared by the scorers that read block weights (``magnitude``, ``taylor``): which tensors
count as a block's weights, and the edge-block protection of Shortened LLaMA's "+" variants."""

from __future__ import annotations

import math
from typing import Any, Callable

from miprun.contracts import SpanScores


def block_weights(block: Any) -> list[tuple[str, Any]]:
    """The weight matrices of a block: parameters with two or more dimensions (linear and Conv1D
    projections), by name. Norm scales and biases are left out, as in Shortened LLaMA."""
    return [(name, p) for name, p in block.named_parameters() if p.ndim >= 2]


def protected_blocks(num_blocks: int, keep_first: int, keep_last: int) -> set[int]:
    """Blocks excluded from pruning: the first ``keep_first`` and the last ``keep_last``."""
    first = set(range(min(keep_first, num_blocks)))
    last = set(range(max(0, num_blocks - keep_last), num_blocks))
    return first | last


def additive_span_scores(
    per_block: list[float], *, metric: str, protected: set[int], combine: Callable[[list[int]], float] | None = None
) -> SpanScores:
    """Span scores whose value is ``combine(blocks)`` (default: the sum of ``per_block``), +∞ for a
    span holding a protected block. Higher = more important."""

    def compute(first: int, length: int) -> float:
        blocks = list(range(first, first + length))
        if any(b in protected for b in blocks):
            return math.inf
        return combine(blocks) if combine is not None else sum(per_block[b] for b in blocks)

    scores = SpanScores(len(per_block), compute, metric=metric, redundant_when_high=False)
    scores.singles()
    return scores
