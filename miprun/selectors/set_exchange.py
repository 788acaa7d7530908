"""Selector ``set-exchange``: Fast-Block-Select's set variant — refinement of the whole pruning set
by exchange.

When the scorer can score any set of blocks removed together (``output-mi``), the pruning set is
refined on the score of the *set*, so blocks that hurt in combination (on SmolLM2-135M, blocks 3
and 4 cost 1.25× their sum) are not chosen because each looks harmless alone. The structure is
MI-PRUN's: a pruning set ``P`` and an alternative set ``A``, exact scores for the top-``K``
candidates only, and a stop when ``P`` no longer changes.

Every iteration

1. scores ``P − {p}`` exactly for every ``p`` in ``P`` and drops the member whose removal from the
   pruning set leaves the lowest set importance;
2. forms ``A``: the ``K = min(⌊ln N⌋ + k, |C|)`` least important single blocks outside ``P`` and
   every block adjacent to the rest of ``P`` (so that contiguous groups can grow and move);
3. scores ``(P − {p}) ∪ {a}`` exactly for every ``a`` in ``A`` and keeps the best;
4. accepts the exchange only if it lowers the importance of the set, otherwise stops.

It starts from the better, by exact set score, of two candidates: the ``N`` least important single
blocks (the paper's initial ``P``) and the best contiguous span of ``N`` blocks among the top-``K``
spans by summed single importance (the paper's span view: by the Data Processing Inequality a span
is scored by one comparison of its input and output).

With a screened scorer (``scores.screen``, ``output-mi`` by default) the singles, the starts and
every exchange run on the screen, and the ``finalists`` best sets the screen evaluated are handed
to ``scores.choose``, which decides on every calibration sequence (``output-mi`` races them).
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.errors import MiprunError
from miprun.selectors.refinement import (
    check_budget,
    check_prune_count,
    least_important,
    top_k,
)


def best_span_start(scores: SpanScores, n: int, singles: list[float], k: int | None) -> list[int]:
    """The contiguous span of ``n`` blocks of lowest exact importance among the top-``K`` spans
    ranked by summed single importance (``k=None``: every span)."""
    firsts = sorted(range(scores.num_blocks - n + 1), key=lambda f: (sum(singles[f : f + n]), f))
    chosen = firsts[: top_k(n, len(firsts), k)]
    scores.prefetch(range(f, f + n) for f in chosen)
    best = min(chosen, key=lambda f: (scores.importance(f, n), f))
    return list(range(best, best + n))


def _alternatives(pruning: list[int], rest: list[int], singles: list[float], k: int | None) -> list[int]:
    """The top-K least important single blocks outside ``pruning`` and the blocks adjacent to ``rest``."""
    ranked = sorted((b for b in range(len(singles)) if b not in pruning), key=lambda b: (singles[b], b))
    chosen = set(ranked[: top_k(len(pruning), len(ranked), k)])
    chosen.update(b + d for b in rest for d in (-1, 1) if 0 <= b + d < len(singles) and b + d not in pruning)
    return sorted(chosen)


def exchange(
    scores: SpanScores, start: list[int], singles: list[float], k: int | None, max_iterations: int
) -> tuple[list[int], list[dict[str, Any]], str]:
    """Refine ``start`` by single exchanges until the set importance stops improving.

    Returns the final set, one trace record per iteration and the stop reason.
    """
    pruning = sorted(start)
    trace: list[dict[str, Any]] = []
    if len(pruning) == 1:  # every single block is already scored exactly: the start is optimal
        return pruning, trace, "converged"
    for iteration in range(1, max_iterations + 1):
        scores.prefetch([pruning] + [[b for b in pruning if b != p] for p in pruning])
        current = scores.set_importance(pruning)
        drops = {p: scores.set_importance([b for b in pruning if b != p]) for p in pruning}
        drop = min(pruning, key=lambda p: (drops[p], p))
        rest = [b for b in pruning if b != drop]
        alternative = _alternatives(pruning, rest, singles, k)
        scores.prefetch(rest + [a] for a in alternative)
        adds = {a: scores.set_importance(rest + [a]) for a in alternative}
        add = min(alternative, key=lambda a: (adds[a], a))
        improved = adds[add] < current
        trace.append({
            "iteration": iteration, "P": pruning, "importance": current, "drop": drop,
            "A": alternative, "add": add, "new_importance": adds[add], "changed": improved,
        })
        if not improved:
            return pruning, trace, "converged"
        pruning = sorted(rest + [add])
    return pruning, trace, "max-iterations"


def refine_sets(scores: SpanScores, n: int, *, k: int | None, max_iterations: int = 20, finalists: int = 2) -> Selection:
    """Fast-Block-Select on set scores (see the module docstring); ``scores.supports_sets`` must hold.

    With a screen (``scores.screen``), the singles, the starts and the exchange run on the screen
    and the ``finalists`` best sets it evaluated are scored on the full scores, which decide.
    """
    check_prune_count(scores.num_blocks, n)
    before = scores.evaluations
    search = scores.ranking
    singles = search.singles()
    starts = {"singles": least_important(singles, n), "span": best_span_start(search, n, singles, k)}
    search.prefetch(starts.values())
    start = min(starts, key=lambda name: (search.set_importance(starts[name]), name))
    final, trace, stop = exchange(search, starts[start], singles, k, max_iterations)
    info: dict[str, Any] = {"metric": scores.metric, "k": k, "mode": "set-exchange", "starts": starts, "start": start,
                            "stop": stop, "iterations": len(trace)}
    if search is not scores:
        shortlist = [blocks for _, blocks in search.best_sets(n)[:finalists]]
        final, decision = scores.choose(shortlist)
        info.update(screened_choice=shortlist[0], finalists=shortlist, decision=decision)
    return Selection(blocks=sorted(final), evaluations=scores.evaluations - before, trace=trace, info=info)


class SetExchangeSelector:
    """Refine the whole pruning set by single exchanges on the set's own score (module docstring);
    needs a scorer registered with ``set_scores`` (``output-mi``).

    :param k: the additive budget ``k`` of ``K = min(⌊ln N⌋ + k, |C|)`` alternatives scored per step.
    :param max_iterations: iteration cap.
    :param finalists: with a screened scorer, how many of the best screened sets are scored on
        every calibration sequence to decide.
    """

    name = "set-exchange"

    def __init__(self, k: int = 5, max_iterations: int = 20, finalists: int = 2) -> None:
        check_budget(k, max_iterations)
        if isinstance(finalists, bool) or not isinstance(finalists, int) or finalists < 1:
            raise MiprunError(f"finalists must be a whole number ≥ 1, got {finalists!r}")
        self.k = k
        self.max_iterations = max_iterations
        self.finalists = finalists

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Return the ``n`` blocks to remove; see :func:`refine_sets`."""
        if not scores.supports_sets:
            raise MiprunError(f"selector 'set-exchange' needs scores of whole block sets (output-mi); "
                              f"'{scores.metric}' scores spans only — use fast-block-select")
        return refine_sets(scores, n, k=self.k, max_iterations=self.max_iterations, finalists=self.finalists)
