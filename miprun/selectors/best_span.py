"""Selector ``best-span``: the contiguous span of N blocks with the lowest span importance.

This is how Gromov et al. (2024) prune: compute the distance of every span of length N and remove
the span ``[l*, l* + N)`` with the smallest one. It scores exactly ``T − N + 1`` spans.
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.selectors.refinement import check_prune_count


class BestSpanSelector:
    """The contiguous span of ``n`` blocks with the lowest importance (ties: leftmost)."""

    name = "best-span"

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Score every span of length ``n`` and return the blocks of the least important one."""
        check_prune_count(scores.num_blocks, n)
        before = scores.evaluations
        spans = [(scores.importance(first, n), first) for first in range(scores.num_blocks - n + 1)]
        best_importance, best_first = min(spans)
        trace = [{
            "length": n,
            "spans": [{"first": f, "blocks": list(range(f, f + n)), "value": scores.value(f, n), "importance": imp}
                      for imp, f in sorted(spans, key=lambda s: s[1])],
            "chosen": list(range(best_first, best_first + n)),
        }]
        return Selection(
            blocks=list(range(best_first, best_first + n)),
            evaluations=scores.evaluations - before,
            trace=trace,
            info={"metric": scores.metric, "first": best_first, "importance": best_importance},
        )
