"""Shortened LLaMA's criteria (perplexity drop, Taylor+) and the magnitude criterion."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import build_tiny

from miprun.contracts import BoundaryStates, RunContext
from miprun.errors import MiprunError
from miprun.models.adapters import adapter_for
from miprun.scorers.magnitude import MagnitudeScorer
from miprun.scorers.perplexity_drop import PerplexityDropScorer
from miprun.scorers.taylor import TaylorScorer

pytestmark = pytest.mark.usefixtures("one_thread")

NO_STATES = BoundaryStates([torch.zeros(1, 1)] * 5)


def test_ppl_scorer_is_the_calibration_perplexity_with_each_block_or_span_removed():
    loaded = build_tiny("llama", layers=4)
    ids = torch.randint(4, 40, (3, 10))
    context = RunContext(loaded.model, loaded.adapter, ids)
    scores = PerplexityDropScorer(batch_size=2).score(NO_STATES, None, context=context)
    assert context.forward_passes == 4
    for first, length in [(0, 1), (1, 1), (3, 1), (1, 2)]:
        pruned = copy.deepcopy(loaded.model)
        adapter = adapter_for(pruned)
        adapter.keep_blocks([i for i in range(4) if not first <= i < first + length])
        with torch.no_grad():
            expected = math.exp(float(pruned(input_ids=ids, labels=ids).loss))
        assert scores.value(first, length) == pytest.approx(expected, rel=1e-5)
    assert context.forward_passes == 5  # the span cost one more pass
    assert not scores.redundant_when_high


def test_taylor_equals_a_manual_autograd_computation():
    loaded = build_tiny("llama", layers=4, seed=3)
    ids = torch.randint(4, 40, (4, 10))
    reference = copy.deepcopy(loaded.model)
    reference.zero_grad()
    reference(input_ids=ids, labels=ids).loss.backward()
    expected = [
        sum(float((p.detach() * p.grad).abs().sum()) for p in block.parameters() if p.ndim >= 2)
        for block in adapter_for(reference).blocks
    ]
    context = RunContext(loaded.model, loaded.adapter, ids)
    scores = TaylorScorer(keep_first=0, keep_last=0, batch_size=3).score(NO_STATES, None, context=context)
    assert [scores.value(i) for i in range(4)] == pytest.approx(expected, rel=1e-4)
    assert scores.value(1, 2) == pytest.approx(expected[1] + expected[2], rel=1e-4)
    assert all(p.grad is None for p in loaded.model.parameters())  # gradients cleared
    assert context.forward_passes == 1


def test_taylor_plus_protects_the_first_four_and_last_two_blocks():
    loaded = build_tiny("llama", layers=8)
    ids = torch.randint(4, 40, (2, 8))
    scores = TaylorScorer().score(NO_STATES, None, context=RunContext(loaded.model, loaded.adapter, ids))
    values = [scores.value(i) for i in range(8)]
    assert [math.isinf(v) for v in values] == [True] * 4 + [False] * 2 + [True] * 2
    assert math.isinf(scores.value(3, 2))


def test_magnitude_is_the_mean_absolute_weight_of_each_block():
    loaded = build_tiny("llama", layers=3)
    with torch.no_grad():
        for p in loaded.adapter.blocks[1].parameters():
            p.mul_(0.1)
    context = RunContext(loaded.model, loaded.adapter, None)
    scores = MagnitudeScorer().score(NO_STATES, None, context=context)
    for i, block in enumerate(loaded.adapter.blocks):
        weights = [p for p in block.parameters() if p.ndim >= 2]
        expected = sum(float(p.detach().abs().sum()) for p in weights) / sum(p.numel() for p in weights)
        assert scores.value(i) == pytest.approx(expected, rel=1e-6)
    assert min(range(3), key=scores.importance) == 1
    l2 = MagnitudeScorer(norm="l2").score(NO_STATES, None, context=context)
    block0 = [p for p in loaded.adapter.blocks[0].parameters() if p.ndim >= 2]
    assert l2.value(0) == pytest.approx(math.sqrt(sum(float(p.detach().pow(2).sum()) for p in block0)), rel=1e-6)
    assert context.forward_passes == 0
    with pytest.raises(MiprunError, match="norm"):
        MagnitudeScorer(norm="max")
