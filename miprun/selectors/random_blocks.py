"""Selector ``random``: N blocks drawn uniformly at random with a seed — the floor every method
must beat."""

from __future__ import annotations

import random
from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.selectors.refinement import check_prune_count


class RandomSelector:
    """``n`` distinct blocks drawn uniformly without replacement from ``random.Random(seed)``.

    Ignores the scores (evaluates none), so any scorer can precede it.

    :param seed: the draw's seed (the run's seed unless set explicitly).
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Return ``n`` random blocks, sorted."""
        check_prune_count(scores.num_blocks, n)
        blocks = sorted(random.Random(self.seed).sample(range(scores.num_blocks), n))
        return Selection(blocks=blocks, evaluations=0, info={"seed": self.seed})
