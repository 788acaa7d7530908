"""The ``output-mi`` scorer, set scores and Fast-Block-Select's refinement on whole block sets."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import build_tiny

import miprun
from miprun.collectors.hidden_states import HiddenStatesCollector
from miprun.contracts import BoundaryStates, RunContext, SpanScores
from miprun.errors import MiprunError
from miprun.estimators.gaussian_channel import GaussianChannelEstimator
from miprun.probing import Prober
from miprun.scorers.output_mi import OutputMIScorer, logit_isometry
from miprun.selectors.greedy import GreedySelector
from miprun.selectors.set_exchange import SetExchangeSelector

COSTS = [3.0, 0.1, 0.2, 1.0, 0.5, 2.0, 0.4, 3.0]


def interacting_scores(calls: list | None = None) -> SpanScores:
    """MI-like set values: 10 − Σ cost, and 5 less when blocks 1 and 2 go together."""

    def compute_set(blocks: tuple[int, ...]) -> float:
        if calls is not None:
            calls.append(blocks)
        return 10.0 - sum(COSTS[b] for b in blocks) - (5.0 if {1, 2} <= set(blocks) else 0.0)

    return SpanScores(len(COSTS), lambda f, n: compute_set(tuple(range(f, f + n))), metric="mi",
                      redundant_when_high=True, compute_set=compute_set)


def test_set_values_are_computed_once_and_share_the_span_cache():
    calls: list = []
    scores = interacting_scores(calls)
    assert scores.supports_sets
    assert scores.set_value([4, 1, 6]) == pytest.approx(9.0)
    assert scores.set_value((6, 4, 1)) == pytest.approx(9.0) and len(calls) == 1
    assert scores.set_value([2, 3]) == scores.value(2, 2) and scores.is_computed(2, 2)  # contiguous → span
    assert scores.set_importance([1, 4, 6]) == pytest.approx(-9.0)
    assert scores.evaluations == 2 and scores.set_table() == [{"blocks": [1, 4, 6], "value": 9.0, "importance": -9.0}]
    spans_only = SpanScores(4, lambda f, n: 1.0, metric="x", redundant_when_high=False)
    assert not spans_only.supports_sets
    with pytest.raises(MiprunError, match="contiguous spans only"):
        spans_only.set_value([0, 2])
    with pytest.raises(MiprunError, match="outside the model"):
        scores.set_value([1, 9])


def test_set_refinement_avoids_blocks_that_hurt_together():
    greedy = GreedySelector().select(interacting_scores(), 3).blocks
    assert greedy == [1, 2, 6]  # each is cheap alone; 1 and 2 together are not
    selection = SetExchangeSelector().select(interacting_scores(), 3)
    scores = interacting_scores()
    # starts: singles [1, 2, 6] scores 10 − 0.7 − 5 = 4.3; the best 3-span [2, 3, 4] scores 8.3
    assert selection.info["starts"] == {"singles": [1, 2, 6], "span": [2, 3, 4]}
    assert selection.info["start"] == "span" and selection.info["mode"] == "set-exchange"
    first = selection.trace[0]
    # dropping 3 leaves {2, 4} = 9.3 (best of 9.3, 8.8, 8.5); adding 6 gives 8.9 > 8.3
    assert (first["P"], first["drop"], first["add"], first["changed"]) == ([2, 3, 4], 3, 6, True)
    assert first["new_importance"] == pytest.approx(-8.9)
    assert selection.blocks == [2, 4, 6] and not selection.trace[-1]["changed"]
    assert selection.info["stop"] == "converged"
    # a local search: here it ends 0.1 below the exhaustive optimum [1, 4, 6] (9.0), far above greedy
    best = max(itertools.combinations(range(len(COSTS)), 3), key=scores.set_value)
    assert list(best) == [1, 4, 6]
    assert scores.set_value(greedy) < scores.set_value(selection.blocks) < scores.set_value(best)
    assert selection.evaluations < 56  # fewer exact scores than all C(8, 3) sets


def test_set_refinement_starts_from_the_best_span_when_it_beats_the_singles():
    costs = [1.0, 0.3, 0.31, 0.32, 1.0, 0.2, 1.0, 0.25]

    def compute_set(blocks):  # a contiguous run is cheaper than its parts; scattered blocks cost extra
        runs = sum(1 for b in blocks if b - 1 not in blocks)
        return 10.0 - sum(costs[b] for b in blocks) - 0.5 * (runs - 1)

    scores = SpanScores(8, lambda f, n: compute_set(tuple(range(f, f + n))), metric="mi",
                        redundant_when_high=True, compute_set=compute_set)
    selection = SetExchangeSelector().select(scores, 3)
    # singles [1, 5, 7]: 10 − 0.75 − 2·0.5 = 8.25; span [1, 2, 3]: 10 − 0.93 = 9.07
    assert selection.info["starts"] == {"singles": [1, 5, 7], "span": [1, 2, 3]}
    assert selection.info["start"] == "span" and selection.blocks == [1, 2, 3]


def _identity(loaded, index: int) -> None:
    block = loaded.adapter.blocks[index]
    with torch.no_grad():  # zero the residual writes: the block becomes the identity
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def test_output_mi_is_the_estimator_on_the_dense_and_pruned_outputs():
    loaded = build_tiny("llama", layers=5, seed=2)
    _identity(loaded, 3)
    ids = torch.randint(4, 40, (3, 12))
    context = RunContext(loaded.model, loaded.adapter, ids)
    estimator = GaussianChannelEstimator()
    scores = OutputMIScorer(screen="off").score(BoundaryStates([None] * 6), estimator, context=context)
    raw = OutputMIScorer(space="hidden", screen="off").score(BoundaryStates([None] * 6), estimator,
                                               context=RunContext(loaded.model, loaded.adapter, ids))
    prober = Prober(loaded.model, loaded.adapter, ids)
    dense = prober.output_states()
    head = loaded.model.get_output_embeddings().weight.detach().double()
    centred = head - head.mean(0)

    def logits(z):  # the centred logits the default space is an isometry of
        return z.double() @ centred.T

    for blocks in ([1], [0, 2], [1, 2, 4]):
        pruned = prober.output_states(skip=blocks)
        assert scores.set_value(blocks) == pytest.approx(estimator.mi(logits(dense), logits(pruned)), rel=1e-9)
        assert raw.set_value(blocks) == pytest.approx(estimator.mi(dense, pruned), rel=1e-9)
        assert raw.set_value(blocks) != pytest.approx(scores.set_value(blocks), rel=1e-3)
    singles = scores.singles()
    assert min(range(5), key=singles.__getitem__) == 3  # removing the identity changes nothing
    assert scores.value(3) > 10 + max(scores.value(i) for i in range(5) if i != 3)
    # one reference pass, then one pass per scored block or set
    assert context.forward_passes == 1 + scores.evaluations
    # the default screen is the same scorer on the first of the 3 sequences (one in 16, at least one)
    screened = OutputMIScorer().score(BoundaryStates([None] * 6), estimator,
                                      context=RunContext(loaded.model, loaded.adapter, ids))
    first = OutputMIScorer(screen="off").score(BoundaryStates([None] * 6), estimator,
                                               context=RunContext(loaded.model, loaded.adapter, ids[:1]))
    assert screened.screen.singles() == pytest.approx(first.singles(), rel=1e-12)
    assert screened.info == {"samples": 3, "screen_samples": 1, "healed": False}
    with pytest.raises(MiprunError, match="needs an estimator"):
        OutputMIScorer().score(BoundaryStates([None] * 6), None, context=context)
    with pytest.raises(MiprunError, match="needs the run context"):
        OutputMIScorer().score(BoundaryStates([None] * 6), estimator)
    with pytest.raises(MiprunError, match="samples must be"):
        OutputMIScorer(samples=0)
    with pytest.raises(MiprunError, match="screen must be auto, off or a whole number"):
        OutputMIScorer(screen="some")


def test_replaying_the_dense_prefix_gives_exactly_the_recomputed_outputs():
    loaded = build_tiny("llama", layers=5, seed=6)
    ids = torch.randint(4, 40, (5, 10))
    fresh, replaying = Prober(loaded.model, loaded.adapter, ids, batch_size=2), Prober(
        loaded.model, loaded.adapter, ids, batch_size=2)
    assert torch.equal(replaying.output_states(reuse_prefix=True), fresh.output_states())
    calls = []
    handle = loaded.adapter.blocks[1].mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        for skip in ([3], [2, 4], [1], [0, 3]):
            calls.clear()
            expected = fresh.output_states(skip=skip)
            ran_block_1 = bool(calls)
            calls.clear()
            assert torch.equal(replaying.output_states(skip=skip, reuse_prefix=True), expected)
            assert bool(calls) == (skip[0] < 1) and ran_block_1 == (1 not in skip)  # block 1 replayed, not run
    finally:
        handle.remove()
    assert replaying.passes == fresh.passes == 5


def test_samples_limits_the_calibration_sequences_used():
    loaded = build_tiny("llama", layers=3, seed=4)
    ids = torch.randint(4, 40, (4, 8))
    estimator = GaussianChannelEstimator()
    few = OutputMIScorer(samples=2).score(BoundaryStates([None] * 4), estimator,
                                          context=RunContext(loaded.model, loaded.adapter, ids))
    same = OutputMIScorer().score(BoundaryStates([None] * 4), estimator,
                                  context=RunContext(loaded.model, loaded.adapter, ids[:2]))
    assert few.singles() == pytest.approx(same.singles(), rel=1e-12)


def test_the_mi_prun_method_runs_output_mi_without_collection_and_removes_identity_blocks(text_file):
    loaded = build_tiny("llama", layers=6, seed=5)
    _identity(loaded, 1)
    _identity(loaded, 4)
    result = miprun.prune(loaded, n=2, calib=str(text_file), num_samples=4, seq_len=16, method="mi-prun", save=False)
    report = result.report
    assert report["strategies"]["scorer"]["name"] == "output-mi"
    assert report["strategies"]["estimator"]["name"] == "gaussian-channel"
    # the report records effective options, defaults included, so it stays exact if a default changes
    assert report["strategies"]["scorer"]["options"] == {"samples": None, "screen": "auto", "batch_size": 4,
                                                         "reuse_prefix": True, "space": "logits", "healed": True}
    assert report["strategies"]["estimator"]["options"] == {"normalize": "none", "eps": 1e-12}
    assert result.selection.blocks == [1, 4]
    info = report["selection"]["info"]
    assert info["mode"] == "set-exchange" and info["decision"]["mode"] == "race"
    # the search ran on the screen (1 of the 4 sequences); the finalists raced on all 4 (one chunk)
    screen = result.scores.screen
    assert report["block_scores"]["from"] == "screen" and report["block_scores"]["screen_samples"] == 1
    assert report["evaluations"]["mi"] == result.scores.evaluations == screen.evaluations >= 6
    assert [row["sequences"] for row in info["decision"]["candidates"]] == [4] * len(info["finalists"])
    # no collection pass (output-mi reads no collected states); passes count the share of sequences
    assert report["collection"] is None and "collect" not in report["timings"]
    # the default heals, so the scores judged healed sets: one dense pass over 16 held-out healing
    # sequences for the preview's fits — 4 tokens per FFN input, 4 × 64 / 16 — (the blocks run to
    # read a cut's inputs are not passes)
    assert info["heal_preview"]["fit_sequences"] == 16 and info["heal_preview"]["cuts_fitted"] >= 2
    assert report["evaluations"]["forward_passes"] == pytest.approx((1 + screen.evaluations) / 4
                                                                    + 1 + len(info["finalists"]) + 16 / 4)
    assert all(len(row["blocks"]) > 1 for row in report["screen"]["set_table"])


def test_fast_block_select_is_algorithm_1_on_any_scorer_and_set_exchange_needs_set_scores(text_file):
    loaded = build_tiny("llama", layers=6, seed=5)
    _identity(loaded, 1)
    _identity(loaded, 2)
    result = miprun.prune(loaded, n=2, calib=str(text_file), num_samples=4, seq_len=16, scorer="output-mi",
                          selector="fast-block-select", save=False)
    info = result.report["selection"]["info"]
    assert info["conflict"] == "greedy-longest-first" and "mode" not in info  # the paper's span refinement
    assert result.selection.blocks == [1, 2] and result.report["set_table"] == []  # spans only, no sets
    with pytest.raises(MiprunError, match="selector 'set-exchange' refines whole block sets .* scorer 'block-mi' scores spans only"):
        miprun.prune(loaded, n=2, scorer="block-mi", selector="set-exchange", save=False)


def test_logit_space_is_an_isometry_of_the_centred_logits():
    loaded = build_tiny("llama", layers=3, seed=7)
    rotation = logit_isometry(loaded.model)
    weight = loaded.model.get_output_embeddings().weight.detach().double()
    centred = weight - weight.mean(0, keepdim=True)
    z = torch.randn(6, rotation.shape[0], dtype=torch.float64)
    torch.testing.assert_close((z @ rotation.T).norm(dim=-1), (z @ centred.T).norm(dim=-1))
    assert rotation.shape == (weight.shape[1], weight.shape[1])  # hidden-sized: no vocabulary-sized tensors
    chunked = logit_isometry(loaded.model, rows_per_chunk=7)  # the Gram summed over vocabulary chunks
    torch.testing.assert_close((z @ chunked.T).norm(dim=-1), (z @ centred.T).norm(dim=-1))
    torch.testing.assert_close(chunked, rotation)  # the unique (Cholesky) factor, however it is summed
    loaded.model.get_output_embeddings().weight = torch.nn.Parameter(torch.empty_like(weight, device="meta"))
    loaded.model.config.tie_word_embeddings = True  # a tied head falls back to the input embedding's weights
    loaded.model.get_input_embeddings().weight = torch.nn.Parameter(weight.float())
    torch.testing.assert_close(logit_isometry(loaded.model), rotation)
    loaded.model.config.tie_word_embeddings = False
    with pytest.raises(MiprunError, match="cannot find the language-model head's weights"):
        logit_isometry(loaded.model)
    with pytest.raises(MiprunError, match="space"):
        OutputMIScorer(space="logit")


def test_offloaded_model_gives_the_same_states_and_output_mi():
    """accelerate's CPU offload leaves every weight a meta tensor behind hooks: inputs must go to the
    hooks' execution device and the logit geometry must come from the offloaded copy of the head."""
    from accelerate import cpu_offload

    loaded = build_tiny("llama", layers=4, seed=3)
    ids = torch.randint(4, 40, (3, 12))

    def run():
        states = HiddenStatesCollector().collect(loaded.model, loaded.adapter, ids)
        scores = OutputMIScorer().score(states, GaussianChannelEstimator(),
                                        context=RunContext(loaded.model, loaded.adapter, ids))
        return states, scores.singles(), scores.set_value([0, 2])

    dense_states, dense_singles, dense_set = run()
    cpu_offload(loaded.model, execution_device=torch.device("cpu"))
    assert loaded.model.get_output_embeddings().weight.is_meta
    states, singles, set_value = run()
    assert all(torch.equal(a, b) for a, b in zip(dense_states.states, states.states))
    assert singles == pytest.approx(dense_singles, rel=1e-12) and set_value == pytest.approx(dense_set, rel=1e-12)


def test_set_exchange_searches_on_the_screen_and_lets_the_full_scores_decide():
    """With a screen (the same scorer on fewer sequences), singles, starts and exchanges run on the
    screen; only its best ``finalists`` sets are scored in full, and the full scores decide."""
    def value(blocks):
        return 10.0 - sum(COSTS[b] for b in blocks) - (5.0 if {1, 2} <= set(blocks) else 0.0)

    def noisy(blocks):  # the screen over-rates [2, 3, 6] (8.4 in full) as 9.2
        return value(blocks) + (0.8 if tuple(blocks) == (2, 3, 6) else 0.0)

    full_calls: list = []

    def full(blocks):
        full_calls.append(blocks)
        return value(blocks)

    screen = SpanScores(8, lambda f, n: noisy(tuple(range(f, f + n))), metric="mi", redundant_when_high=True,
                        compute_set=noisy)
    scores = SpanScores(8, lambda f, n: full(tuple(range(f, f + n))), metric="mi", redundant_when_high=True,
                        compute_set=full, screen=screen)
    selection = SetExchangeSelector().select(scores, 3)
    assert scores.ranking is screen and selection.info["screened_choice"] == [2, 3, 6]
    assert selection.info["finalists"] == [[2, 3, 6], [2, 4, 6]]  # the screen's two best 3-sets
    assert full_calls == [(2, 3, 6), (2, 4, 6)]  # nothing else ran in full
    assert selection.blocks == [2, 4, 6]  # 8.9 beats 8.4 in full
    assert selection.evaluations == scores.evaluations == screen.evaluations + 2
    one = SetExchangeSelector(finalists=1).select(
        SpanScores(8, lambda f, n: value(tuple(range(f, f + n))), metric="mi", redundant_when_high=True,
                   compute_set=value, screen=SpanScores(8, lambda f, n: noisy(tuple(range(f, f + n))), metric="mi",
                                                        redundant_when_high=True, compute_set=noisy)), 3)
    assert one.blocks == [2, 3, 6]  # one finalist: the screen alone decides
    with pytest.raises(MiprunError, match="finalists must be"):
        SetExchangeSelector(finalists=0)
