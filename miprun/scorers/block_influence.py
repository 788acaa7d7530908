"""Scorer ``block-influence``: ShortGPT's Block Influence (Men et al., 2024).

BI = 1 − E_t[cos(x_t, y_t)] between the input x and output y of a block (or span), averaged over
tokens. A block whose output points the same way as its input changes little: low BI = safe to
remove.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import BoundaryStates, SpanScores
from miprun.scorers.boundary import boundary_span_scores


class BlockInfluenceScorer:
    """1 − cosine similarity between block input and output, averaged over tokens."""

    name = "block-influence"

    def score(self, states: BoundaryStates, estimator: object | None = None, *, context: Any = None) -> SpanScores:
        """Span scores with value = 1 − mean cosine (higher = more important)."""

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(x.double(), dim=-1)

        def compare(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(1.0 - (a * b).sum(-1).mean())

        return boundary_span_scores(states, prepare, compare, metric="1-cos", redundant_when_high=False)
