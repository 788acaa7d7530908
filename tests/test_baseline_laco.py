"""LaCo layer collapse: the merge formula, the surgeon, and the selector's merge-and-check loop."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from miprun.contracts import RunContext, Selection, SpanScores
from miprun.models.layer_collapse import (
    merge_plan,
    mergeable_parameters,
    merged_parameters,
)
from miprun.probing import Prober, mean_cosine
from miprun.selectors.laco import LayerCollapseSelector
from miprun.selectors.random_blocks import RandomSelector
from miprun.surgeons.laco import LayerCollapseSurgeon

pytestmark = pytest.mark.usefixtures("one_thread")

ANY_SCORES = SpanScores(6, lambda f, n: 0.0, metric="x", redundant_when_high=False)


def test_merge_plan_folds_each_removed_block_into_the_nearest_kept_block_before_it():
    assert merge_plan(8, [2, 3, 6]) == {1: [2, 3], 5: [6]}
    assert merge_plan(8, [0, 1, 4]) == {2: [0, 1], 3: [4]}  # nothing kept before 0: the next kept block


def test_merged_parameters_follow_equation_one_with_original_base_weights():
    loaded = build_tiny("llama", layers=4)
    merged = merged_parameters(loaded.adapter, 1, [2, 3])
    for name, value in merged.items():
        base = dict(loaded.adapter.blocks[1].named_parameters())[name]
        k2 = dict(loaded.adapter.blocks[2].named_parameters())[name]
        k3 = dict(loaded.adapter.blocks[3].named_parameters())[name]
        torch.testing.assert_close(value, base + (k2 - base) + (k3 - base))  # not a chain ending at θ_3
    assert "input_layernorm.weight" not in merged and "mlp.down_proj.weight" in merged
    assert set(merged) == set(mergeable_parameters(loaded.adapter.blocks[1]))


def test_surgeon_collapses_in_place_following_equation_one():
    """Blocks 2 and 3 folded into block 1: θ1 + (θ2 − θ1) + (θ3 − θ1), computed here by hand from
    copies taken before the surgery (not by the function the surgeon calls)."""
    loaded = build_tiny("llama", layers=5)
    before = {i: {n: p.detach().clone() for n, p in loaded.adapter.blocks[i].named_parameters()} for i in (1, 2, 3)}
    summary = LayerCollapseSurgeon().apply(loaded.model, loaded.adapter, Selection([2, 3]))
    assert summary["merges"] == {"1": [2, 3]} and summary["kept_blocks"] == [0, 1, 4]
    assert loaded.model.config.num_hidden_layers == 3 and loaded.adapter.num_blocks == 3
    merged = dict(loaded.adapter.blocks[1].named_parameters())
    for name in mergeable_parameters(loaded.adapter.blocks[1]):
        theta = {i: before[i][name] for i in (1, 2, 3)}
        torch.testing.assert_close(merged[name], theta[1] + (theta[2] - theta[1]) + (theta[3] - theta[1]))
    torch.testing.assert_close(merged["input_layernorm.weight"], before[1]["input_layernorm.weight"])  # norms kept
    loaded.model(input_ids=torch.randint(4, 40, (2, 8)))  # still runs


def test_selector_accepts_merges_top_down_and_scores_what_the_surgeon_builds():
    loaded = build_tiny("llama", layers=6)
    ids = torch.randint(4, 40, (3, 10))
    context = RunContext(loaded.model, loaded.adapter, ids)
    # threshold −1 accepts every merge: the first base is H − C = 6 − 3 = 3, folding 4 and 5
    selection = LayerCollapseSelector(layers_per_merge=3, threshold=-1.0).select(ANY_SCORES, 2, context=context)
    assert selection.blocks == [4, 5] and selection.info["merges"] == {"3": [4, 5]}
    assert selection.trace[0]["accepted"] and selection.info["forced"] == 0
    similarity = selection.trace[0]["similarity"]
    # rebuild the collapsed model with the surgeon and measure the same similarity by hand
    prober = Prober(loaded.model, loaded.adapter, ids)
    reference = prober.final_states().reshape(3, 10, -1)[:, 1:].reshape(-1, 32)
    LayerCollapseSurgeon().apply(loaded.model, loaded.adapter, selection)
    collapsed = Prober(loaded.model, loaded.adapter, ids).final_states().reshape(3, 10, -1)[:, 1:].reshape(-1, 32)
    assert mean_cosine(collapsed, reference) == pytest.approx(similarity, abs=1e-6)


def test_selector_forces_the_most_similar_merges_when_the_threshold_rejects_all():
    loaded = build_tiny("llama", layers=5)
    ids = torch.randint(4, 40, (2, 8))
    context = RunContext(loaded.model, loaded.adapter, ids)
    selection = LayerCollapseSelector(threshold=1.01).select(SpanScores(5, lambda f, n: 0.0, metric="x", redundant_when_high=False), 1, context=context)
    assert selection.info["forced"] == 1 and not any(t["accepted"] for t in selection.trace[:-1])
    forced = selection.trace[-1]
    assert forced["forced"] and selection.blocks == [int(max(forced["candidates"], key=forced["candidates"].get))]


def test_random_selector_is_seeded():
    scores = SpanScores(10, lambda f, n: 0.0, metric="x", redundant_when_high=False)
    assert RandomSelector(seed=3).select(scores, 4).blocks == RandomSelector(seed=3).select(scores, 4).blocks
    assert RandomSelector(seed=3).select(scores, 4).blocks != RandomSelector(seed=4).select(scores, 4).blocks
    assert len(set(RandomSelector(seed=1).select(scores, 9).blocks)) == 9
