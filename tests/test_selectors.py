"""Block selectors: greedy, Fast-Block-Select, brute force, the refinement engine and span tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from miprun.contracts import SpanScores
from miprun.errors import MiprunError
from miprun.registry import get_registry
from miprun.selectors import refinement
from miprun.selectors.brute_force import BruteForceSelector
from miprun.selectors.fast_block_select import FastBlockSelector
from miprun.selectors.greedy import GreedySelector
from miprun.selectors.refinement import Span, candidate_spans, contiguous_groups, top_k
from miprun.selectors.span_table import load_span_scores, parse_span_table

FIXTURE = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "miprun_llama2_7b_table6.tsv"
needs_fixture = pytest.mark.skipif(
    not FIXTURE.exists(), reason=f"paper fixture {FIXTURE} is absent (shared/fixtures not checked out)"
)
SELECTORS = [GreedySelector, FastBlockSelector, BruteForceSelector]


def singles_table(mi: list[float], missing: float = 0.0) -> SpanScores:
    """MI scores with the given single-block values and ``missing`` for every longer span."""
    return SpanScores.from_table({(i, 1): v for i, v in enumerate(mi)}, len(mi), metric="mi",
                                 redundant_when_high=True, missing=missing)


def table6() -> SpanScores:
    """The paper's Table 6 with MI 0.5 for the unprinted spans."""
    return load_span_scores(FIXTURE, 32, missing=0.5)


# ----------------------------------------------------------------------------- greedy


def test_greedy_picks_the_lowest_single_importance():
    scores = singles_table([0.1, 0.9, 0.3, 0.8, 0.85, 0.2])  # importance = −MI
    selection = GreedySelector().select(scores, 3)
    assert selection.blocks == [1, 3, 4]
    assert selection.evaluations == 6
    assert [r["block"] for r in selection.trace[0]["ranking"]][:3] == [1, 4, 3]


def test_greedy_breaks_ties_by_index():
    assert GreedySelector().select(singles_table([0.5, 0.7, 0.7, 0.7, 0.1]), 2).blocks == [1, 2]


@pytest.mark.parametrize("cls", SELECTORS)
@pytest.mark.parametrize("n", [0, -1, 6, 7])
def test_prune_count_out_of_range_is_an_error(cls, n):
    with pytest.raises(MiprunError, match=r"cannot prune .* between 1 and 5"):
        cls().select(singles_table([0.1] * 6), n)


# ----------------------------------------------------------------------------- helpers


def test_contiguous_groups():
    assert contiguous_groups([23, 24, 26, 27, 28]) == [Span(23, 2), Span(26, 3)]
    assert contiguous_groups([5]) == [Span(5, 1)]
    assert contiguous_groups([0, 2, 4]) == [Span(0, 1), Span(2, 1), Span(4, 1)]


def test_candidates_lie_inside_the_pool_and_rank_by_single_sum():
    singles = [0.0, -3.0, -2.0, 0.0, -1.0, -5.0]
    ranked = candidate_spans(2, {1, 2, 4, 5}, singles)
    assert [(s.first, total) for s, total in ranked] == [(4, -6.0), (1, -5.0)]


def test_top_k_formula():
    # K = min(floor(ln L) + k, |C|): ln 2 < 1 ≤ ln 3 < ln 7 < 2 ≤ ln 8
    assert [top_k(length, 100, 5) for length in (1, 2, 3, 7, 8)] == [5, 5, 6, 6, 7]
    assert top_k(3, 4, 5) == 4
    assert top_k(3, 9, None) == 9


@pytest.mark.parametrize(
    "options, message",
    [({"k": 0}, "k must be"), ({"conflict": "max-sun"}, "did you mean 'max-sum'"),
     ({"max_iterations": 0}, "max_iterations")],
)
def test_bad_options_are_errors(options, message):
    with pytest.raises(MiprunError, match=message):
        FastBlockSelector(**options)


def test_registry_builds_the_selectors_with_their_names():
    registry = get_registry()
    assert registry.create("selector", "greedy").name == "greedy"
    fast = registry.create("selector", "fast-block-select", k=3, conflict="max-sum")
    assert (fast.name, fast.k, fast.conflict) == ("fast-block-select", 3, "max-sum")
    assert registry.create("selector", "brute-force").name == "brute-force"


# ----------------------------------------------------------------------------- the paper's example


@needs_fixture
def test_fast_block_select_reproduces_the_worked_example():
    selection = FastBlockSelector().select(table6(), 5)
    assert selection.blocks == [24, 25, 26, 27, 28]
    first, second = selection.trace
    assert first["P"] == [23, 24, 26, 27, 28]
    assert first["A"] == [20, 21, 22, 25, 29]
    assert [(g["group"], g["K"], g["num_candidates"]) for g in first["groups"]] == [
        ([23, 24], 5, 9), ([26, 27, 28], 6, 8)]
    assert [g["choice"]["blocks"] for g in first["groups"]] == [[24, 25], [26, 27, 28]]
    assert [g["order"] for g in first["groups"]] == [1, 0]  # longest group first
    evaluated = [c["blocks"][0] for c in first["groups"][1]["candidates"] if c["evaluated"]]
    assert evaluated == [26, 25, 24, 27, 23, 22]  # ranked by single-importance sum
    assert second["P"] == [24, 25, 26, 27, 28] and not second["changed"]
    assert second["stop"] == "converged"
    # 32 singles + 9 of the 17 length-2/3 candidates + 6 length-5 spans (|C| = 6 ≤ K)
    assert selection.evaluations == 32 + 5 + 6 + 6


@needs_fixture
def test_max_sum_takes_the_exact_best_combination_and_ends_at_the_same_blocks():
    selection = FastBlockSelector(conflict="max-sum").select(table6(), 5)
    choices = [g["choice"] for g in selection.trace[0]["groups"]]
    assert [c["blocks"] for c in choices] == [[26, 27], [23, 24, 25]]
    assert sum(c["value"] for c in choices) == pytest.approx(1.7520521)  # > 1.731 of Figure 2
    assert selection.blocks == [24, 25, 26, 27, 28]
    assert selection.info["stop"] == "converged"


@needs_fixture
@pytest.mark.parametrize("conflict", ["greedy-longest-first", "max-sum"])
def test_brute_force_scores_every_candidate(conflict):
    selection = BruteForceSelector(conflict=conflict).select(table6(), 5)
    assert selection.blocks == [24, 25, 26, 27, 28]
    assert [g["K"] for g in selection.trace[0]["groups"]] == [9, 8]
    assert selection.evaluations == 32 + 9 + 8 + 6


@needs_fixture
def test_iteration_cap_stops_and_returns_the_last_pruning_set():
    selection = FastBlockSelector(conflict="max-sum", max_iterations=1).select(table6(), 5)
    assert selection.info["stop"] == "max-iterations"
    assert selection.blocks == [23, 24, 25, 26, 27]


# ----------------------------------------------------------------------------- fallbacks and cycles


@pytest.mark.parametrize("conflict", ["greedy-longest-first", "max-sum"])
def test_top_k_without_a_free_candidate_widens(conflict):
    # P = {0, 2}: two length-1 groups; with k=1 both share the top-1 list [block 0].
    selection = FastBlockSelector(k=1, conflict=conflict, max_iterations=1).select(
        singles_table([0.9, 0.1, 0.8, 0.2]), 2)
    assert selection.blocks == [0, 2]
    fallbacks = [g["fallback"] for g in selection.trace[0]["groups"]]
    assert "widened" in fallbacks and "best-effort" not in fallbacks


def test_greedy_falls_back_to_best_effort_blocks_when_no_span_is_free():
    # P = {0,1,2} ∪ {4,5,6}, A = {3,8,10,12,14,16}; the first group takes {2,3,4}, which leaves
    # no free length-3 span for the second group.
    mi = [0.1] * 20
    for b, v in zip([0, 1, 2, 4, 5, 6], [0.95, 0.94, 0.93, 0.92, 0.91, 0.90]):
        mi[b] = v
    for b in (3, 8, 10, 12, 14, 16):
        mi[b] = 0.5
    values = {(i, 1): v for i, v in enumerate(mi)}
    values[(2, 3)] = 0.99
    scores = SpanScores.from_table(values, 20, missing=0.0)
    selection = FastBlockSelector(max_iterations=1).select(scores, 6)
    first = selection.trace[0]
    assert first["A"] == [3, 8, 10, 12, 14, 16]
    assert [g["choice"]["blocks"] for g in first["groups"]] == [[2, 3, 4], [0, 1, 5]]
    assert [g["fallback"] for g in first["groups"]] == [None, "best-effort"]
    assert selection.blocks == [0, 1, 2, 3, 4, 5]


def test_a_pruning_set_seen_before_stops_the_loop(monkeypatch):
    def alternate(groups, lists, scores, pool, singles):
        picks = [(2, 3)] if groups == [Span(0, 2)] else [(0, 1)]
        return picks, [None], [0]

    monkeypatch.setattr(refinement, "_choose_greedy", alternate)
    selection = FastBlockSelector().select(singles_table([0.9, 0.8, 0.1, 0.2]), 2)
    assert [it["new_P"] for it in selection.trace] == [[2, 3], [0, 1]]
    assert selection.info["stop"] == "cycle"
    assert selection.trace[-1]["cycle_to_P_of_iteration"] == 1
    assert selection.blocks == [0, 1]


# ----------------------------------------------------------------------------- span tables


def test_span_table_parsing_and_errors(tmp_path):
    text = "# comment\nlength\tmi\tfirst_layer\n2 0.5 1  # trailing\n\n1 0.25 3\n"
    assert parse_span_table(text) == {(1, 2): 0.5, (3, 1): 0.25}
    assert parse_span_table("0 1 0.1\n") == {(0, 1): 0.1}
    for bad, message in [("0 1\n", "3 columns"), ("0 x 0.1\n", "not 'first_layer"),
                         ("a b c\n", "header"), ("# only\n", "no span rows"),
                         ("0 1 0.1\n0 1 0.2\n", "twice")]:
        with pytest.raises(MiprunError, match=message):
            parse_span_table(bad)
    with pytest.raises(MiprunError, match="not found"):
        load_span_scores(tmp_path / "absent.tsv", 4)
    path = tmp_path / "t.tsv"
    path.write_text("first_layer length mi\n2 3 0.4\n")
    with pytest.raises(MiprunError, match="reaches past the 4 blocks"):
        load_span_scores(path, 4)
    scores = load_span_scores(path, 5)
    assert scores.importance(2, 3) == -0.4
    with pytest.raises(MiprunError, match="--missing-mi"):
        scores.value(0, 1)
