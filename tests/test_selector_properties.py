"""Property tests of the selectors over random span-MI tables (T in 2..16)."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from miprun.contracts import SpanScores
from miprun.selectors.brute_force import BruteForceSelector
from miprun.selectors.fast_block_select import FastBlockSelector
from miprun.selectors.greedy import GreedySelector

CONFLICTS = ["greedy-longest-first", "max-sum"]
# Coarse values make ties common, so the tie-breaking paths are exercised too.
VALUES = st.one_of(st.floats(0.0, 2.0, allow_nan=False), st.sampled_from([0.0, 0.5, 1.0]))


@st.composite
def problems(draw):
    """A random full span table ``{(first, length): mi}``, T and N."""
    t = draw(st.integers(2, 16))
    n = draw(st.integers(1, t - 1))
    spans = [(f, length) for length in range(1, t + 1) for f in range(t - length + 1)]
    values = draw(st.lists(VALUES, min_size=len(spans), max_size=len(spans)))
    return dict(zip(spans, values)), t, n


def fresh(values, t) -> SpanScores:
    """New, unevaluated MI scores over the table."""
    return SpanScores.from_table(values, t)


def all_selectors():
    """Every selector configuration under test."""
    yield GreedySelector()
    for conflict in CONFLICTS:
        yield FastBlockSelector(conflict=conflict)
        yield FastBlockSelector(k=1, conflict=conflict)
        yield BruteForceSelector(conflict=conflict)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_every_selector_returns_n_valid_blocks_terminates_and_is_deterministic(problem):
    values, t, n = problem
    for selector in all_selectors():
        a = selector.select(fresh(values, t), n)
        b = selector.select(fresh(values, t), n)
        assert len(a.blocks) == len(set(a.blocks)) == n
        assert all(0 <= x < t for x in a.blocks) and a.blocks == sorted(a.blocks)
        assert (a.blocks, a.evaluations, a.trace) == (b.blocks, b.evaluations, b.trace)
        if selector.name != "greedy":
            assert a.info["stop"] in {"converged", "cycle", "max-iterations"}
            assert len(a.trace) <= selector.max_iterations


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(CONFLICTS), st.integers(1, 6))
def test_fast_block_select_never_scores_more_than_brute_force_from_the_same_pruning_set(problem, conflict, k):
    """From the same (P, A), Fast-Block-Select scores a subset of brute force's spans.

    Over whole runs the totals are NOT ordered: different picks lead the two down different
    iterations (see test_whole_run_totals_can_differ_either_way).
    """
    values, t, n = problem
    fast, brute = fresh(values, t), fresh(values, t)
    a = FastBlockSelector(k=k, conflict=conflict, max_iterations=1).select(fast, n)
    b = BruteForceSelector(conflict=conflict, max_iterations=1).select(brute, n)
    assert a.evaluations == fast.evaluations <= b.evaluations == brute.evaluations
    assert {(r["first"], r["length"]) for r in fast.table()} <= {(r["first"], r["length"]) for r in brute.table()}


def _totals(values, t, n) -> tuple[int, int]:
    """Whole-run evaluations of Fast-Block-Select and brute force on one table, each checked
    against the distinct spans its scores were asked for."""
    fast_scores, brute_scores = fresh(values, t), fresh(values, t)
    fast = FastBlockSelector().select(fast_scores, n)
    brute = BruteForceSelector().select(brute_scores, n)
    assert fast.evaluations == len(fast_scores.table()) and brute.evaluations == len(brute_scores.table())
    return fast.evaluations, brute.evaluations


def test_whole_run_totals_can_differ_either_way():
    """On this T=7, N=4 table Fast-Block-Select reads more spans over the whole run than brute force
    (its picks lead it through more iterations); on other tables of the same size it reads fewer."""
    rows = {1: [0.36, 0.18, 0.96, 0.63, 0.15, 0.95, 0.72], 2: [0.85, 0.22, 0.12, 0.85, 0.27, 0.62],
            3: [0.52, 0.8, 0.2, 0.31, 0.31], 4: [1.0, 0.62, 0.37, 0.03], 5: [0.95, 0.8, 0.2],
            6: [0.2, 0.02], 7: [0.99]}
    values = {(f, length): v for length, row in rows.items() for f, v in enumerate(row)}
    fast, brute = _totals(values, 7, 4)
    assert fast > brute
    rng = random.Random(0)
    orders = set()
    for _ in range(200):
        table = {(f, length): rng.random() for length in range(1, 8) for f in range(8 - length)}
        fast, brute = _totals(table, 7, 4)
        orders.add((fast > brute) - (fast < brute))
    assert {-1, 1} <= orders


def _exact_best(first_iteration) -> float:
    """Exhaustive minimum summed importance over conflict-free picks from the evaluated lists."""
    lists = [
        [(c["blocks"], c["importance"]) for c in g["candidates"] if c["evaluated"]]
        for g in first_iteration["groups"]
    ]
    best = float("inf")
    for combo in itertools.product(*lists):
        blocks = [b for span, _ in combo for b in span]
        if len(blocks) == len(set(blocks)):
            best = min(best, sum(imp for _, imp in combo))
    return best


@settings(max_examples=60, deadline=None)
@given(problems())
def test_max_sum_is_the_exact_optimum_and_both_rules_give_n_blocks(problem):
    values, t, n = problem
    for cls in (FastBlockSelector, BruteForceSelector):
        greedy = cls(conflict="greedy-longest-first", max_iterations=1).select(fresh(values, t), n)
        exact = cls(conflict="max-sum", max_iterations=1).select(fresh(values, t), n)
        assert len(greedy.blocks) == len(exact.blocks) == n
        first = exact.trace[0]
        sizes = [sum(c["evaluated"] for c in g["candidates"]) for g in first["groups"]]
        if len(sizes) > 4 or max(sizes) ** len(sizes) > 20000:
            continue
        chosen = sum(g["choice"]["importance"] for g in first["groups"])
        assert abs(chosen - _exact_best(first)) < 1e-9
        g_first = greedy.trace[0]
        if not any(g["fallback"] for g in g_first["groups"]) and cls is BruteForceSelector:
            assert chosen <= sum(g["choice"]["importance"] for g in g_first["groups"]) + 1e-9
