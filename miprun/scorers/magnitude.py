"""Scorer ``magnitude``: block importance from the size of its weights (the "Mag" criterion of
Shortened LLaMA, Kim et al., 2024).

Per block, over its weight matrices W_k (parameters with ≥ 2 dimensions):

* ``norm="mean"`` (default): mean |w| over all their entries;
* ``norm="l1"``: Σ_k ‖W_k‖₁ (the paper's Mag with p = 1);
* ``norm="l2"``: √(Σ_k ‖W_k‖_F²), the Frobenius norm of all of them together.

A span's value is the same quantity over the weights of all its blocks. Small weights = safe to
remove. ``keep_first`` / ``keep_last`` protect edge blocks (+∞), which is the paper's "Mag+".
Needs the model, so it reads it from the run context; it runs no forward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from miprun.contracts import BoundaryStates, SpanScores
from miprun.errors import MiprunError
from miprun.scorers.weights import additive_span_scores, block_weights, protected_blocks

NORMS = ("mean", "l1", "l2")


class MagnitudeScorer:
    """Weight magnitude per block (mean |w|, L1 or L2), optionally protecting edge blocks.

    :param norm: ``"mean"``, ``"l1"`` or ``"l2"`` (see the module docstring).
    :param keep_first: never prune the first this many blocks (Mag+ uses 4).
    :param keep_last: never prune the last this many blocks (Mag+ uses 2).
    """

    name = "magnitude"

    def __init__(self, norm: str = "mean", keep_first: int = 0, keep_last: int = 0) -> None:
        if norm not in NORMS:
            raise MiprunError(f"magnitude norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.norm = norm
        self.keep_first = keep_first
        self.keep_last = keep_last

    def score(self, states: BoundaryStates, estimator: object | None = None, *, context: Any = None) -> SpanScores:
        """Span scores with value = weight magnitude of the span (higher = more important)."""
        if context is None or getattr(context, "adapter", None) is None:
            raise MiprunError("scorer 'magnitude' reads the model's weights and needs the run context")
        blocks = context.adapter.blocks
        abs_sum, sq_sum, count = [], [], []
        with torch.no_grad():
            for block in blocks:
                weights = [p for _, p in block_weights(block)]
                abs_sum.append(sum(float(p.detach().abs().double().sum()) for p in weights))
                sq_sum.append(sum(float(p.detach().double().pow(2).sum()) for p in weights))
                count.append(sum(p.numel() for p in weights))

        def combine(span: list[int]) -> float:
            if self.norm == "l1":
                return sum(abs_sum[b] for b in span)
            if self.norm == "l2":
                return math.sqrt(sum(sq_sum[b] for b in span))
            return sum(abs_sum[b] for b in span) / max(1, sum(count[b] for b in span))

        per_block = [combine([b]) for b in range(len(blocks))]
        protected = protected_blocks(len(blocks), self.keep_first, self.keep_last)
        return additive_span_scores(per_block, metric=f"magnitude-{self.norm}", protected=protected, combine=combine)
