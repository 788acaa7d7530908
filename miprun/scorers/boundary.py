"""The shared engine of scorers that compare two block-boundary states.

A span ``[first, first + length)`` is scored by comparing its input state ``states[first]`` with
its output state ``states[first + length]`` — by the Data Processing Inequality a span's MI is
bounded by that of its parts, so one comparison per span suffices. Each boundary state is
prepared once (normalised, or turned into a Gram matrix) and reused for every span that starts or
ends there.
"""

from __future__ import annotations

from typing import Any, Callable

from miprun.contracts import BoundaryStates, SpanScores


def boundary_span_scores(
    states: BoundaryStates,
    prepare: Callable[[Any], Any],
    compare: Callable[[Any, Any], float],
    *,
    metric: str,
    redundant_when_high: bool,
    eager_singles: bool = True,
) -> SpanScores:
    """Span scores whose value is ``compare(prepare(states[first]), prepare(states[first + length]))``.

    :param eager_singles: evaluate every single block now, so that the cost of scoring is paid in
        the scoring stage and the report has every block's score.
    """
    prepared: dict[int, Any] = {}

    def boundary(index: int) -> Any:
        if index not in prepared:
            prepared[index] = prepare(states.states[index])
        return prepared[index]

    scores = SpanScores(
        states.num_blocks,
        lambda first, length: compare(boundary(first), boundary(first + length)),
        metric=metric,
        redundant_when_high=redundant_when_high,
    )
    if eager_singles:
        scores.singles()
    return scores
