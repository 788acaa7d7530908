"""Scorer ``block-mi``: MI-PRUN block importance (the MI-PRUN paper).

Importance of block i is I^i = −MI(b_in^i, b_out^i); of a contiguous span [j, j + L) it is
−MI(b_in^j, b_out^{j+L−1}). High MI means the output still carries the input's information and the
block adds little, so high MI = safe to remove. The MI comes from the run's estimator; each
boundary state is prepared by the estimator once (e.g. its Gram matrix) and reused for every span.
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import BoundaryStates, SpanScores
from miprun.errors import MiprunError
from miprun.scorers.boundary import boundary_span_scores


class BlockMIScorer:
    """−MI between the input and output states of every block and span."""

    name = "block-mi"

    def score(self, states: BoundaryStates, estimator: object | None = None, *, context: Any = None) -> SpanScores:
        """Span scores with value = MI in nats (higher = more redundant)."""
        if estimator is None:
            raise MiprunError("scorer 'block-mi' needs an estimator; pass --estimator (e.g. renyi)")
        return boundary_span_scores(
            states, estimator.prepare, estimator.mi_prepared, metric="mi", redundant_when_high=True
        )
