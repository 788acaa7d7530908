"""Fast-Block-Select (MI-PRUN Algorithm 1): span refinement scoring only the top-K candidates."""

from __future__ import annotations

from miprun.scores import SpanScores
from miprun.selectors.refinement import GREEDY_LONGEST_FIRST, check_options, refine
from miprun.selectors.set_refinement import refine_sets
from miprun.strategies import Selection


class FastBlockSelector:
    """Iterative refinement with ``K = min(⌊ln L⌋ + k, |C|)`` exact scores per candidate list.

    On span scores (``block-mi``, a span table) it is the paper's span refinement
    (:mod:`miprun.selectors.refinement`); on scores of whole block sets (``output-mi``) it refines
    the pruning set by exchange on the set's own score (:mod:`miprun.selectors.set_refinement`).

    :param k: the additive budget ``k`` (the paper uses 5).
    :param conflict: ``"greedy-longest-first"`` (the paper's Figure 2) or ``"max-sum"`` (the exact
        best conflict-free combination, as the paper's text describes).
    :param max_iterations: iteration cap; a repeated pruning set also stops the loop.
    """

    name = "fast-block-select"
    default_scorer = "output-mi"  # without --scorer: MI of the model output with and without the set

    def __init__(self, k: int = 5, conflict: str = GREEDY_LONGEST_FIRST, max_iterations: int = 20) -> None:
        check_options(k, conflict, max_iterations)
        self.k = k
        self.conflict = conflict
        self.max_iterations = max_iterations

    def select(self, scores: SpanScores, n: int) -> Selection:
        """Return the ``n`` blocks to remove: :func:`~miprun.selectors.set_refinement.refine_sets`
        when ``scores`` can score block sets, else :func:`~miprun.selectors.refinement.refine`."""
        if scores.supports_sets:
            return refine_sets(scores, n, k=self.k, max_iterations=self.max_iterations)
        return refine(scores, n, k=self.k, conflict=self.conflict, max_iterations=self.max_iterations)
