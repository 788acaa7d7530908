"""Scorer ``angular``: the angular distance between a span's input and output (Gromov et al., 2024,
"The Unreasonable Ineffectiveness of the Deeper Layers").

For a span of ``n`` blocks starting at block ``l`` the paper defines

    d(x^(l), x^(l+n)) = (1/π) · arccos( x^(l) · x^(l+n) / (‖x^(l)‖ ‖x^(l+n)‖) )

where ``x^(l)`` is the residual stream entering block ``l``. It lies in [0, 1]: 0 when the span
leaves every token's direction unchanged (an identity span), 1 when it reverses it. The angle is
computed as 2·atan2(‖â − b̂‖, ‖â + b̂‖) of the unit vectors, which equals arccos of the cosine
clamped to [−1, 1] but is exact near 0 (arccos(1 − ε) ≈ √(2ε) turns rounding of the cosine into
an angle of 1e-8; this form gives exactly 0 for identical directions) and can never be NaN. The value is averaged over
the collected tokens, or — with ``last_token=True``, the paper's own choice — over the last token
of every calibration sequence only. Low distance = safe to remove; pair it with the ``best-span``
selector to remove the best contiguous span as the paper does.

Last-token positions: the ``hidden-states`` collector keeps a random subset of positions, which
need not include the last one, so with ``last_token=True`` the scorer runs one extra forward pass
over the calibration tokens (through :mod:`miprun.probing`) that captures exactly the last
position at every boundary, and counts it in the run's forward passes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from miprun.contracts import BoundaryStates, SpanScores
from miprun.scorers.boundary import boundary_span_scores


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of arccos(cos(a_t, b_t)) / π for row-normalised ``a`` and ``b`` (n × d),
    computed as 2·atan2(‖a − b‖, ‖a + b‖) (see the module docstring); always in [0, 1]."""
    angle = 2.0 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))
    return float(angle.mean() / math.pi)


class AngularScorer:
    """Angular distance between span input and output, token mean (or last token only).

    :param last_token: use only the last token of each calibration sequence (the paper's choice).
    :param batch_size: sequences per batch for the extra last-token pass.
    """

    name = "angular"

    def __init__(self, last_token: bool = False, batch_size: int = 4) -> None:
        self.last_token = last_token
        self.batch_size = batch_size

    def score(self, states: BoundaryStates, estimator: object | None = None, *, context: Any = None) -> SpanScores:
        """Span scores with value = mean angular distance in [0, 1] (higher = more important)."""
        if self.last_token:
            states = self._last_token_states(context)

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(x.double(), dim=-1)

        return boundary_span_scores(states, prepare, angular_distance, metric="angular", redundant_when_high=False)

    def _last_token_states(self, context: Any) -> BoundaryStates:
        from miprun.probing import Prober

        prober = Prober.from_context(context, batch_size=self.batch_size, who="angular with last_token=True")
        captured = prober.boundary_states_at(-1)
        return BoundaryStates(captured, forward_passes=1, info={"tokens": int(captured[0].shape[0]), "last_token": True})
