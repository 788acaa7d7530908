"""Angular distance (Gromov et al.) and the best-span selector, on states with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny

from miprun.collectors.hidden_states import HiddenStatesCollector
from miprun.contracts import BoundaryStates, RunContext, SpanScores
from miprun.errors import MiprunError
from miprun.probing import Prober
from miprun.scorers.angular import AngularScorer
from miprun.scorers.block_influence import BlockInfluenceScorer
from miprun.selectors.best_span import BestSpanSelector

pytestmark = pytest.mark.usefixtures("one_thread")


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate 2-D row vectors by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    return x @ torch.tensor([[c, s], [-s, c]], dtype=x.dtype)


def known_states() -> BoundaryStates:
    """Block 0 is the identity, block 1 rotates every token by π/3, block 2 by π/2."""
    torch.manual_seed(0)
    x0 = torch.randn(50, 2)
    x1 = x0.clone()
    x2 = rotate(x1, math.pi / 3)
    x3 = rotate(x2, math.pi / 2)
    return BoundaryStates([x0, x1, x2, x3])


def test_identity_block_is_fully_redundant_under_angular_and_cosine():
    states = known_states()
    angular = AngularScorer().score(states, None)
    influence = BlockInfluenceScorer().score(states, None)
    assert angular.value(0) == 0.0  # arccos of a clamped cosine of 1: exactly 0, never NaN
    assert influence.value(0) == pytest.approx(0.0, abs=1e-12)


def test_angular_distance_is_the_angle_over_pi_for_spans_too():
    scores = AngularScorer().score(known_states(), None)
    assert scores.value(1) == pytest.approx(1 / 3, abs=1e-6)
    assert scores.value(2) == pytest.approx(1 / 2, abs=1e-6)
    assert scores.value(1, 2) == pytest.approx(5 / 6, abs=1e-6)  # 60° + 90° between span ends
    assert scores.value(0, 2) == pytest.approx(1 / 3, abs=1e-6)
    assert scores.metric == "angular" and not scores.redundant_when_high


def test_clamping_keeps_parallel_and_opposite_vectors_finite():
    x = torch.randn(20, 8, dtype=torch.float32) * 1e3
    scores = AngularScorer().score(BoundaryStates([x, x * 3.0000001, -x]), None)
    assert scores.value(0) == pytest.approx(0.0, abs=1e-3)
    assert scores.value(1) == pytest.approx(1.0, abs=1e-3)
    assert all(math.isfinite(scores.value(i)) for i in range(2))


def test_best_span_picks_the_contiguous_span_with_the_lowest_distance():
    table = {(f, 2): v for f, v in enumerate([0.5, 0.2, 0.4, 0.2, 0.9])}
    scores = SpanScores.from_table(table, 6, metric="angular", redundant_when_high=False)
    selection = BestSpanSelector().select(scores, 2)
    assert selection.blocks == [1, 2]  # ties go to the leftmost span
    assert selection.evaluations == 5 and selection.info["first"] == 1
    assert [row["first"] for row in selection.trace[0]["spans"]] == [0, 1, 2, 3, 4]


def test_last_token_option_uses_exactly_the_last_position_of_every_sequence():
    loaded = build_tiny("llama", layers=4)
    ids = torch.randint(4, 40, (3, 10))
    full = HiddenStatesCollector(max_tokens=0, drop_first=False).collect(loaded.model, loaded.adapter, ids)
    manual = [s.reshape(3, 10, -1)[:, -1] for s in full.states]
    captured = Prober(loaded.model, loaded.adapter, ids, batch_size=2).boundary_states_at(-1)
    for got, want in zip(captured, manual):
        torch.testing.assert_close(got, want)
    context = RunContext(loaded.model, loaded.adapter, ids)
    scores = AngularScorer(last_token=True).score(full, None, context=context)
    expected = AngularScorer().score(BoundaryStates(manual), None)
    assert [scores.value(i) for i in range(4)] == pytest.approx([expected.value(i) for i in range(4)], abs=1e-9)
    assert context.forward_passes == 1
    with pytest.raises(MiprunError, match="run context"):
        AngularScorer(last_token=True).score(full, None)
