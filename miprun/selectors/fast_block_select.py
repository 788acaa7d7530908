"""Fast-Block-Select (MI-PRUN Algorithm 1): span refinement scoring only the top-K candidates."""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.selectors.refinement import GREEDY_LONGEST_FIRST, check_options, refine


class FastBlockSelector:
    """The paper's Algorithm 1 on any scorer's span scores (:mod:`miprun.selectors.refinement`):
    iterative span refinement with ``K = min(⌊ln L⌋ + k, |C|)`` exact scores per candidate list.

    Whole-set refinement on scorers that value any block set is its own selector, ``set-exchange``.

    :param k: the additive budget ``k`` (the paper uses 5).
    :param conflict: ``"greedy-longest-first"`` (the paper's Figure 2) or ``"max-sum"`` (the exact
        best conflict-free combination, as the paper's text describes).
    :param max_iterations: iteration cap; a repeated pruning set also stops the loop.
    """

    name = "fast-block-select"

    def __init__(self, k: int = 5, conflict: str = GREEDY_LONGEST_FIRST, max_iterations: int = 20) -> None:
        check_options(k, conflict, max_iterations)
        self.k = k
        self.conflict = conflict
        self.max_iterations = max_iterations

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Return the ``n`` blocks to remove; see :func:`miprun.selectors.refinement.refine`."""
        return refine(scores, n, k=self.k, conflict=self.conflict, max_iterations=self.max_iterations)
