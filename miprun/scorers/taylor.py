"""Scorer ``taylor``: first-order Taylor importance of whole blocks (the "Taylor+" criterion of
Shortened LLaMA, Kim et al., 2024).

With L the mean next-token loss over the calibration tokens, the importance of block n is

    I_n = Σ_k Σ_{i,j} | W^n_{k,ij} · ∂L/∂W^n_{k,ij} |

over the block's weight matrices W^n_k — the first-order estimate of how much the loss changes when
each weight is set to zero, summed over the block. One forward and one backward pass over the
calibration set (the gradient is of the loss over the *whole* set, accumulated batch by batch).
The "+" of Taylor+ is the paper's heuristic of never pruning the first four and the last two
blocks (``keep_first=4``, ``keep_last=2``; set both to 0 for plain Taylor). A span's value is the
sum of its blocks' values.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import BoundaryStates, SpanScores
from miprun.scorers.weights import additive_span_scores, block_weights, protected_blocks


def taylor_importance(prober: Any) -> list[float]:
    """Σ |w · ∂L/∂w| over each block's weight matrices, for the prober's model and calibration set.

    Gradients are computed for block weights only and cleared afterwards; ``requires_grad`` flags
    are restored.
    """
    model, adapter = prober.model, prober.adapter
    wanted = {id(p) for block in adapter.blocks for _, p in block_weights(block)}
    flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        prober.loss(backward=True)
        values = []
        with torch.no_grad():
            for block in adapter.blocks:
                total = 0.0
                for _, p in block_weights(block):
                    if p.grad is not None:
                        total += float((p.detach() * p.grad).abs().double().sum())
                values.append(total)
        return values
    finally:
        for p, requires, grad in flags:
            p.grad = grad
            p.requires_grad_(requires)


class TaylorScorer:
    """Block importance Σ |w · ∂L/∂w| on the calibration data (Taylor+ by default).

    :param keep_first: never prune the first this many blocks (Taylor+: 4).
    :param keep_last: never prune the last this many blocks (Taylor+: 2).
    :param batch_size: calibration sequences per forward/backward batch.
    """

    name = "taylor"

    def __init__(self, keep_first: int = 4, keep_last: int = 2, batch_size: int = 4) -> None:
        self.keep_first = keep_first
        self.keep_last = keep_last
        self.batch_size = batch_size

    def score(self, states: BoundaryStates, estimator: object | None = None, *, context: Any = None) -> SpanScores:
        """Span scores with value = summed |w · grad| (higher = more important; protected = +∞)."""
        from miprun.probing import Prober

        prober = Prober.from_context(context, batch_size=self.batch_size, who="scorer 'taylor'")
        per_block = taylor_importance(prober)
        protected = protected_blocks(len(per_block), self.keep_first, self.keep_last)
        return additive_span_scores(per_block, metric="taylor", protected=protected)
