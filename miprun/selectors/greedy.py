"""Greedy selection: remove the N blocks that matter least on their own."""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.selectors.refinement import check_prune_count


class GreedySelector:
    """The ``n`` blocks with the lowest single-block importance (ties: lower index first).

    Scores single blocks only, so ``evaluations`` is at most the number of blocks.
    """

    name = "greedy"

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Return the ``n`` least important blocks, sorted; the trace holds the full ranking."""
        check_prune_count(scores.num_blocks, n)
        before = scores.evaluations
        singles = scores.singles()
        ranking = sorted(range(scores.num_blocks), key=lambda i: (singles[i], i))
        trace = [{
            "ranking": [
                {"block": i, "value": scores.value(i), "importance": singles[i]} for i in ranking
            ],
            "chosen": sorted(ranking[:n]),
        }]
        return Selection(
            blocks=sorted(ranking[:n]),
            evaluations=scores.evaluations - before,
            trace=trace,
            info={"metric": scores.metric},
        )
