"""Scorer ``ppl``: the perplexity criterion of Shortened LLaMA (Kim et al., 2024).

Each block is removed on its own and the calibration perplexity of the resulting model is
measured; a block whose removal leaves the perplexity lowest matters least. One-shot: all blocks
are scored on the dense model (unlike SLEB, which re-scores after every removal), so with the
``greedy`` selector this costs T forward passes. A span's value is measured the same way — the
perplexity with the whole span removed, one more forward pass per span asked for.
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import BoundaryStates, SpanScores


class PerplexityDropScorer:
    """Calibration perplexity of the model with the block (span) removed; higher = more important.

    :param batch_size: calibration sequences per forward batch.
    """

    name = "ppl"

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size = batch_size

    def score(self, states: BoundaryStates, estimator: object | None = None, *, context: Any = None) -> SpanScores:
        """Span scores with value = calibration perplexity without the span (every block now)."""
        from miprun.probing import Prober

        prober = Prober.from_context(context, batch_size=self.batch_size, who="scorer 'ppl'")
        num_blocks = context.adapter.num_blocks
        scores = SpanScores(
            num_blocks,
            lambda first, length: prober.perplexity(range(first, first + length)),
            metric="ppl-without",
            redundant_when_high=False,
        )
        scores.singles()
        return scores
