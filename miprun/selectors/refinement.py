"""The iterative span refinement of MI-PRUN (Algorithm 1), shared by Fast-Block-Select and brute force.

Starting from the ``N`` least important single blocks ``P`` and the ``M = min(N, T − N)`` least
important blocks ``A`` outside it, every iteration

1. splits ``P`` into maximal contiguous groups;
2. for a group of length ``L`` lists every span of length ``L`` lying inside ``P ∪ A`` and ranks
   them by the sum of their single-block importances (ascending, ties by position);
3. computes the exact span score of the first ``K`` of them only (Fast-Block-Select:
   ``K = min(⌊ln L⌋ + k, |C|)``; brute force: ``K = |C|``);
4. picks one candidate per group, no two overlapping, by a conflict rule;
5. sets ``P`` to the union of the picks and recomputes ``A``,

until ``P`` stops changing, a ``P`` seen before comes back (a cycle) or the iteration cap is hit.

Groups of the same length share one candidate list (it depends only on ``L`` and ``P ∪ A``), so
the conflict rules work per length. Decisions where the paper is silent:

* ``greedy-longest-first`` (reproduces the paper's Figure 2): groups are served longest first
  (ties: leftmost first); each takes its lowest-importance evaluated candidate that overlaps no
  earlier pick (ties: leftmost).
* ``max-sum`` (the paper's text): the exact minimum of summed span importance over conflict-free
  combinations of evaluated candidates, by dynamic programming over block positions.
* Fallback when no conflict-free pick exists among the top ``K``: first *widen* — evaluate every
  candidate of that length (for ``max-sum``: of every length, which always succeeds because the
  current groups themselves are a conflict-free combination); if a greedy group still has nothing
  free, take *best-effort* the ``L`` least important free blocks of ``P ∪ A`` (possibly not
  contiguous; never scored as a span). Both are recorded in the trace as ``fallback``.
* On a cycle or at the cap, the ``P`` produced last is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.errors import MiprunError, did_you_mean

GREEDY_LONGEST_FIRST = "greedy-longest-first"
MAX_SUM = "max-sum"
CONFLICT_RULES = (GREEDY_LONGEST_FIRST, MAX_SUM)


@dataclass(frozen=True, order=True)
class Span:
    """Blocks ``[first, first + length)``."""

    first: int
    length: int

    @property
    def blocks(self) -> list[int]:
        """The block indices of the span, ascending."""
        return list(range(self.first, self.first + self.length))

    def overlaps(self, taken: set[int]) -> bool:
        """Whether any block of the span is in ``taken``."""
        return any(b in taken for b in range(self.first, self.first + self.length))


def check_prune_count(num_blocks: int, n: int) -> None:
    """Raise :class:`MiprunError` unless ``1 ≤ n < num_blocks``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < num_blocks:
        raise MiprunError(
            f"cannot prune {n!r} of {num_blocks} blocks; choose a number of blocks to prune "
            f"between 1 and {num_blocks - 1}"
        )


def check_budget(k: int | None, max_iterations: int) -> None:
    """Validate the candidate budget ``k`` and the iteration cap; a :class:`MiprunError` names the fix."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise MiprunError(f"k must be a whole number ≥ 1, got {k!r}; pass e.g. k=5 (the paper's value)")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise MiprunError(f"max_iterations must be a whole number ≥ 1, got {max_iterations!r}")


def check_options(k: int | None, conflict: str, max_iterations: int) -> None:
    """Validate refinement options; raise :class:`MiprunError` naming the bad one and the fix."""
    check_budget(k, max_iterations)
    if conflict not in CONFLICT_RULES:
        raise MiprunError(
            f"unknown conflict rule '{conflict}'{did_you_mean(str(conflict), list(CONFLICT_RULES))}; "
            f"valid rules: {', '.join(CONFLICT_RULES)}"
        )


def least_important(singles: list[float], count: int, exclude: set[int] = frozenset()) -> list[int]:
    """The ``count`` blocks outside ``exclude`` with the lowest importance (ties: lower index), sorted."""
    ranked = sorted((i for i in range(len(singles)) if i not in exclude), key=lambda i: (singles[i], i))
    return sorted(ranked[:count])


def contiguous_groups(blocks: list[int]) -> list[Span]:
    """Split sorted distinct ``blocks`` into maximal runs of consecutive indices."""
    groups: list[Span] = []
    for b in sorted(blocks):
        if groups and groups[-1].first + groups[-1].length == b:
            groups[-1] = Span(groups[-1].first, groups[-1].length + 1)
        else:
            groups.append(Span(b, 1))
    return groups


def candidate_spans(length: int, pool: set[int], singles: list[float]) -> list[tuple[Span, float]]:
    """Every span of ``length`` inside ``pool`` with its summed single importance, most prunable first."""
    found = []
    for first in sorted(pool):
        span = Span(first, length)
        if all(b in pool for b in span.blocks):
            found.append((span, sum(singles[b] for b in span.blocks)))
    return sorted(found, key=lambda c: (c[1], c[0].first))


def top_k(length: int, num_candidates: int, k: int | None) -> int:
    """``K = min(⌊ln L⌋ + k, |C|)``; ``k=None`` means every candidate (brute force)."""
    if k is None:
        return num_candidates
    return min(math.floor(math.log(length)) + k, num_candidates)


@dataclass
class _Candidates:
    """The ranked candidates of one length and which of them are scored exactly."""

    length: int
    ranked: list[tuple[Span, float]]
    budget: int
    exact: dict[Span, float] = field(default_factory=dict)
    widened: bool = False

    def evaluate(self, scores: SpanScores, count: int) -> None:
        """Score the first ``count`` ranked candidates exactly."""
        for span, _ in self.ranked[:count]:
            self.exact[span] = scores.importance(span.first, span.length)

    def widen(self, scores: SpanScores) -> None:
        """Score every candidate exactly (fallback)."""
        if len(self.exact) < len(self.ranked):
            self.widened = True
        self.evaluate(scores, len(self.ranked))

    def best_free(self, taken: set[int]) -> Span | None:
        """The exactly scored candidate of lowest importance overlapping nothing in ``taken``."""
        free = [s for s in self.exact if not s.overlaps(taken)]
        return min(free, key=lambda s: (self.exact[s], s.first), default=None)


def _choose_greedy(
    groups: list[Span], lists: dict[int, _Candidates], scores: SpanScores,
    pool: set[int], singles: list[float],
) -> tuple[list[tuple[int, ...]], list[str | None], list[int]]:
    """Longest group first, each taking its best candidate free of earlier picks (with fallback)."""
    order = sorted(range(len(groups)), key=lambda g: (-groups[g].length, groups[g].first))
    picks: list[tuple[int, ...]] = [()] * len(groups)
    fallbacks: list[str | None] = [None] * len(groups)
    taken: set[int] = set()
    for g in order:
        cands = lists[groups[g].length]
        span = cands.best_free(taken)
        if span is None:
            cands.widen(scores)
            fallbacks[g] = "widened"
            span = cands.best_free(taken)
        if span is not None:
            picks[g] = tuple(span.blocks)
        else:
            fallbacks[g] = "best-effort"
            free = sorted((b for b in pool if b not in taken), key=lambda b: (singles[b], b))
            picks[g] = tuple(sorted(free[: groups[g].length]))
        taken.update(picks[g])
    return picks, fallbacks, order


def _min_sum_combination(
    counts: dict[int, int], lists: dict[int, _Candidates], num_blocks: int
) -> list[Span] | None:
    """Exact minimum-importance set of disjoint spans with ``counts[L]`` spans of each length ``L``.

    Dynamic programming left to right over block positions; state = remaining count per length.
    Ties keep the first option in the order "place the shortest length here", …, "skip".
    """
    lengths = sorted(counts)

    @lru_cache(maxsize=None)
    def best(pos: int, remaining: tuple[int, ...]) -> tuple[float, tuple[Span, ...]] | None:
        if not any(remaining):
            return 0.0, ()
        if pos >= num_blocks:
            return None
        options = []
        for i, length in enumerate(lengths):
            span = Span(pos, length)
            if remaining[i] and span in lists[length].exact:
                rest = best(pos + length, remaining[:i] + (remaining[i] - 1,) + remaining[i + 1:])
                if rest is not None:
                    options.append((lists[length].exact[span] + rest[0], (span,) + rest[1]))
        skip = best(pos + 1, remaining)
        if skip is not None:
            options.append(skip)
        if not options:
            return None
        low = min(cost for cost, _ in options)
        return next(o for o in options if o[0] == low)

    result = best(0, tuple(counts[length] for length in lengths))
    return list(result[1]) if result is not None else None


def _choose_max_sum(
    groups: list[Span], lists: dict[int, _Candidates], scores: SpanScores, num_blocks: int
) -> tuple[list[tuple[int, ...]], list[str | None]]:
    """Exact best conflict-free combination; widens every length if the top-K lists admit none."""
    counts: dict[int, int] = {}
    for g in groups:
        counts[g.length] = counts.get(g.length, 0) + 1
    chosen = _min_sum_combination(counts, lists, num_blocks)
    fallback = None
    if chosen is None:
        for cands in lists.values():
            cands.widen(scores)
        fallback = "widened"
        chosen = _min_sum_combination(counts, lists, num_blocks)
        assert chosen is not None, "the current groups are always a conflict-free combination"
    # Groups of equal length share one list: hand them the chosen spans left to right.
    picks: list[tuple[int, ...]] = [()] * len(groups)
    for length in counts:
        members = [g for g in range(len(groups)) if groups[g].length == length]
        spans = sorted(s for s in chosen if s.length == length)
        for g, span in zip(members, spans):
            picks[g] = tuple(span.blocks)
    return picks, [fallback] * len(groups)


def _group_trace(
    group: Span, cands: _Candidates, scores: SpanScores, pick: tuple[int, ...],
    fallback: str | None, order: int | None,
) -> dict[str, Any]:
    """One group's record: candidates, K, exact values, the pick."""
    def exact(span: Span) -> dict[str, Any]:
        if span not in cands.exact:
            return {"evaluated": False, "value": None, "importance": None}
        return {"evaluated": True, "value": scores.value(span.first, span.length),
                "importance": cands.exact[span]}

    pick_span = Span(pick[0], len(pick)) if list(pick) == list(range(pick[0], pick[0] + len(pick))) else None
    choice: dict[str, Any] = {"blocks": list(pick), "contiguous": pick_span is not None}
    if pick_span is not None and pick_span in cands.exact:
        choice.update(value=scores.value(pick_span.first, pick_span.length),
                      importance=cands.exact[pick_span])
    return {
        "group": group.blocks,
        "length": group.length,
        "order": order,
        "num_candidates": len(cands.ranked),
        "K": cands.budget,
        "candidates": [{"blocks": s.blocks, "single_sum": total, **exact(s)} for s, total in cands.ranked],
        "evaluated": [s.blocks for s, _ in cands.ranked if s in cands.exact],
        "choice": choice,
        "fallback": fallback,
    }


def refine(
    scores: SpanScores,
    n: int,
    *,
    k: int | None,
    conflict: str = GREEDY_LONGEST_FIRST,
    max_iterations: int = 20,
) -> Selection:
    """Run the MI-PRUN refinement on ``scores`` and return the ``n`` blocks to remove.

    :param k: Fast-Block-Select's ``k`` in ``K = min(⌊ln L⌋ + k, |C|)``; ``None`` scores every
        candidate exactly (brute force).
    :param conflict: ``"greedy-longest-first"`` or ``"max-sum"`` (see the module docstring).
    :param max_iterations: iteration cap; a ``P`` seen before also stops the loop.
    """
    check_options(k, conflict, max_iterations)
    num_blocks = scores.num_blocks
    check_prune_count(num_blocks, n)
    before = scores.evaluations
    singles = scores.singles()
    m = min(n, num_blocks - n)

    pruning = least_important(singles, n)
    seen = [pruning]
    trace: list[dict[str, Any]] = []
    stop: str | None = None
    spans_used: set[Span] = set()
    for iteration in range(1, max_iterations + 1):
        alternative = least_important(singles, m, exclude=set(pruning))
        pool = set(pruning) | set(alternative)
        groups = contiguous_groups(pruning)
        lists: dict[int, _Candidates] = {}
        for length in sorted({g.length for g in groups}):
            ranked = candidate_spans(length, pool, singles)
            lists[length] = _Candidates(length, ranked, top_k(length, len(ranked), k))
            lists[length].evaluate(scores, lists[length].budget)

        if conflict == GREEDY_LONGEST_FIRST:
            picks, fallbacks, order = _choose_greedy(groups, lists, scores, pool, singles)
            rank = {g: r for r, g in enumerate(order)}
        else:
            picks, fallbacks = _choose_max_sum(groups, lists, scores, num_blocks)
            rank = {}

        new = sorted(b for pick in picks for b in pick)
        assert len(new) == n == len(set(new)), "the picks must be N distinct blocks"
        for cands in lists.values():
            spans_used.update(cands.exact)
        record: dict[str, Any] = {
            "iteration": iteration,
            "P": pruning,
            "A": alternative,
            "groups": [
                _group_trace(g, lists[g.length], scores, picks[i], fallbacks[i], rank.get(i))
                for i, g in enumerate(groups)
            ],
            "new_P": new,
            "changed": new != pruning,
            "stop": None,
        }
        trace.append(record)
        if new == pruning:
            stop = "converged"
        elif new in seen:
            stop = "cycle"
            record["cycle_to_P_of_iteration"] = seen.index(new) + 1
        pruning = new
        if stop is not None:
            break
        seen.append(new)
    stop = stop or "max-iterations"
    trace[-1]["stop"] = stop

    return Selection(
        blocks=sorted(pruning),
        evaluations=scores.evaluations - before,
        trace=trace,
        info={
            "iterations": len(trace),
            "stop": stop,
            "metric": scores.metric,
            "k": k,
            "conflict": conflict,
            "multi_block_spans_scored": sum(1 for s in spans_used if s.length > 1),
        },
    )
