"""Linear CKA (Kornblith et al., 2019) between the states at the two ends of a span.

CKA(X, Y) = ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F · ‖Yᶜᵀ Yᶜ‖_F) with column-centred Xᶜ, Yᶜ (n tokens × d).
It lies in [0, 1], is invariant to orthogonal transforms and isotropic scaling, and equals 1 when
the output is a rotated, scaled copy of the input.
"""

from __future__ import annotations

import torch

from miprun.contracts import BoundaryStates, SpanScores
from miprun.scorers.boundary import boundary_span_scores


def _prepare(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    centred = (x - x.mean(0, keepdim=True)).double()
    # ‖XᵀX‖_F = ‖XXᵀ‖_F; use the smaller Gram
    gram = centred @ centred.T if centred.shape[0] <= centred.shape[1] else centred.T @ centred
    return centred, float(torch.linalg.matrix_norm(gram))


def linear_cka(px: tuple[torch.Tensor, float], py: tuple[torch.Tensor, float]) -> float:
    """Linear CKA between two prepared (centred matrix, self-similarity norm) pairs."""
    (x, nx), (y, ny) = px, py
    cross = float(torch.linalg.matrix_norm(y.T @ x)) ** 2
    return cross / (nx * ny) if nx > 0 and ny > 0 else 0.0


class LinearCKAScorer:
    """Importance = −CKA(span input, span output)."""

    name = "linear-cka"

    def score(self, states: BoundaryStates, estimator: object | None = None, *, context: object = None) -> SpanScores:
        """Span scores with value = linear CKA (higher = more redundant)."""
        return boundary_span_scores(states, _prepare, linear_cka, metric="cka", redundant_when_high=True)
