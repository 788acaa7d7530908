"""Brute-force refinement: MI-PRUN's span refinement with an exact score for every candidate."""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.selectors.refinement import GREEDY_LONGEST_FIRST, check_options, refine


class BruteForceSelector:
    """The refinement of :class:`~miprun.selectors.fast_block_select.FastBlockSelector` with
    ``K = |C|``: every candidate span is scored exactly (the reference that Fast-Block-Select saves on).

    :param conflict: ``"greedy-longest-first"`` or ``"max-sum"``.
    :param max_iterations: iteration cap; a repeated pruning set also stops the loop.
    """

    name = "brute-force"

    def __init__(self, conflict: str = GREEDY_LONGEST_FIRST, max_iterations: int = 20) -> None:
        check_options(None, conflict, max_iterations)
        self.conflict = conflict
        self.max_iterations = max_iterations

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Return the ``n`` blocks to remove; see :func:`miprun.selectors.refinement.refine`."""
        return refine(scores, n, k=None, conflict=self.conflict, max_iterations=self.max_iterations)
