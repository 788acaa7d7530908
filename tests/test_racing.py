"""Racing candidates on chunks of sequences (miprun.racing) and SpanScores.choose."""

from __future__ import annotations

import pytest

from miprun.contracts import SpanScores
from miprun.racing import clearly_worse, race


def test_a_clear_gap_stops_the_race_after_the_first_chunk():
    per_sequence = {"good": [1.0, 1.1, 0.9, 1.05] * 4, "bad": [0.5, 0.6, 0.4, 0.55] * 4}
    asked = []

    def values_on(chunk, alive):
        asked.append((chunk, tuple(alive)))
        return {c: per_sequence[c][chunk * 4 : chunk * 4 + 4] for c in alive}

    winner, record = race(["bad", "good"], range(4), values_on)
    assert winner == "good"
    assert record["chunks_used"] == 1 and asked == [(0, ("bad", "good"))]  # 4 of 16 sequences were enough
    assert record["candidates"][0] == {"candidate": "bad", "mean": pytest.approx(0.5125), "sequences": 4,
                                       "dropped_after_chunk": 1}


def test_a_gap_within_noise_uses_every_sequence_and_decides_by_the_mean():
    a = [1.0, 0.2, 0.9, 0.1, 1.1, 0.3, 0.8, 0.2]
    b = [0.3, 1.0, 0.2, 0.9, 0.2, 1.2, 0.1, 0.85]  # mean 0.59375 vs 0.575: noise, slightly higher

    def values_on(chunk, alive):
        return {c: {"a": a, "b": b}[c][chunk * 2 : chunk * 2 + 2] for c in alive}

    winner, record = race(["a", "b"], range(4), values_on)
    assert record["chunks_used"] == 4 and winner == "b"
    assert all(row["dropped_after_chunk"] is None and row["sequences"] == 8 for row in record["candidates"])


def test_the_t_test_needs_two_pairs_and_respects_the_confidence():
    assert not clearly_worse([1.0], [0.0], 0.95)  # one pair: no variance, no evidence
    assert clearly_worse([1.0, 1.0], [0.0, 0.0], 0.95)  # identical gaps: no noise at all
    leader, other = [1.0, 1.2, 0.9, 1.1], [0.8, 1.1, 0.6, 1.0]  # mean gap 0.175, sd 0.096: t = 3.66
    assert clearly_worse(leader, other, 0.95) and not clearly_worse(leader, other, 0.99)  # t₃ 3.18 < 3.66 < 5.84


def test_choose_compares_set_values_without_a_decider_and_uses_the_scorers_own_otherwise():
    def compute_set(blocks):
        return 10.0 - sum(blocks)

    plain = SpanScores(6, lambda f, n: compute_set(tuple(range(f, f + n))), metric="mi",
                       redundant_when_high=True, compute_set=compute_set)
    best, record = plain.choose([[4, 5], [0, 2], (2, 0)])  # the duplicate is scored once
    assert best == [0, 2] and len(record["candidates"]) == 2

    seen = []

    def decide(sets):
        seen.append(sets)
        return sets[-1], {"mode": "test"}

    decided = SpanScores(6, lambda f, n: 0.0, metric="mi", redundant_when_high=True, compute_set=compute_set,
                         decide=decide)
    assert decided.choose([[1, 3], [3, 1], [2]]) == ([2], {"mode": "test"}) and seen == [[(1, 3), (2,)]]
    assert decided.evaluations == 0  # deciding computed no set value through the cache
