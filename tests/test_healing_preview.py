"""Healing previews (miprun.healing_preview) and the heal-aware selection they give the default."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, build_tiny

import miprun
from miprun.engine import _preview
from miprun.healing import LinearHealer
from miprun.models.adapters import ffn_output_modules
from miprun.probing import Prober, forward_until
from miprun.progress import Reporter

FIT = torch.randint(4, 80, (12, 12), generator=torch.Generator().manual_seed(31))
JUDGE = torch.randint(4, 80, (4, 12), generator=torch.Generator().manual_seed(32))

pytestmark = pytest.mark.usefixtures("float32_products")  # the fits' algebra, to float32 tolerances


@pytest.mark.parametrize("architecture", ["llama", "gemma2", "gpt2", "mixtral", "granite", "olmo2"])
def test_a_preview_heals_a_block_set_as_the_healer_does_with_independent_fits(architecture):
    """The preview's run-time fits give the pruned model the output the healer's own independent
    fits (``sequential=False``, folded nowhere; the preview does not refit the block after a cut)
    give it — a refit, Gemma's refit through the norm, GPT-2's Conv1D with its bias, Mixtral's map —
    for a cut at block 0 and one inside."""
    loaded = build_tiny(architecture, layers=6, seed=33)
    healer = LinearHealer(sequential=False, after_cut=False, untie_head=True)  # tiny models tie their heads
    blocks = [0, 3, 4]
    judge = Prober(loaded.model, loaded.adapter, JUDGE)
    with healer.applied(loaded.model, loaded.adapter, blocks, FIT):
        expected = judge.output_states(blocks)
    plain = judge.output_states(blocks)
    preview = healer.preview(loaded.model, loaded.adapter, FIT)
    with preview.applied(blocks) as first:
        got = judge.output_states(blocks)
    assert first == 0  # the cut at block 0 changes the embedding: every block runs
    scale = float((expected - plain).abs().max())
    assert scale > 1e-3  # healing changes the output, so the comparison means something
    torch.testing.assert_close(got, expected, atol=1e-4 * scale, rtol=1e-4)
    info = preview.info()
    assert info["cuts_fitted"] == 2 and info["fit_sequences"] == 12 and info["sequential"] is False
    assert info["refits_after_cut"].startswith("not previewed")  # the report says what selection judged


def test_fits_read_in_the_dense_pass_equal_those_read_by_running_one_block_later():
    """With no memory to keep every block's inputs from the dense pass, a cut's inputs are read by
    running its block alone on the kept dense input: the same fits."""
    loaded = build_tiny("llama", layers=6, seed=34)
    healer = LinearHealer()
    roomy = healer.preview(loaded.model, loaded.adapter, FIT)
    tight = healer.preview(loaded.model, loaded.adapter, FIT)
    tight.cache_bytes = 0
    for cut in [(2, 3), (2, 4), (5, 5), (0, 1)]:
        torch.testing.assert_close(roomy._fit(cut)[1], tight._fit(cut)[1], atol=1e-9, rtol=1e-7)
    assert roomy._prober.passes == tight._prober.passes == 1  # one dense pass each; block runs are not passes


def test_a_full_cache_drops_fits_before_the_inputs_they_are_made_from():
    """Beyond its memory a preview drops the least recently used fits (a product and a solve each)
    before any block's inputs (a block run, a Gram and its factorisation): a search that comes
    back to a block refits from kept inputs instead of rereading them."""
    from miprun.healing_preview import _bytes

    loaded = build_tiny("llama", layers=6, seed=37)
    preview = LinearHealer().preview(loaded.model, loaded.adapter, FIT)
    for cut in [(2, 2), (2, 3), (3, 3), (3, 4)]:
        preview._fit(cut)
    expected = preview._cache[("fit", (2, 2))][1].clone()
    one_input = _bytes(preview._cache[("inputs", 2)])
    one_fit = _bytes(preview._cache[("fit", (3, 4))])
    preview.cache_bytes = 3 * one_input + 2 * one_fit  # room for three blocks' inputs and two fits
    preview._fit((4, 4))  # a third block's inputs and a fifth fit: the three oldest fits go
    assert set(preview._cache) == {("inputs", 2), ("inputs", 3), ("inputs", 4), ("fit", (3, 4)), ("fit", (4, 4))}
    kept = preview._cache[("inputs", 2)]
    torch.testing.assert_close(preview._fit((2, 2))[1], expected, atol=0, rtol=0)
    assert preview._cache[("inputs", 2)] is kept  # refitted from the kept inputs, not reread


def test_a_released_preview_frees_its_fits_and_dense_outputs_and_recomputes_the_same_answer():
    """The run releases the preview once the selection (fits) and then the heal (dense outputs) no
    longer read it; asked again, it recomputes the same healed output."""
    loaded = build_tiny("llama", layers=6, seed=35)
    preview = LinearHealer().preview(loaded.model, loaded.adapter, FIT)
    judge = Prober(loaded.model, loaded.adapter, JUDGE)
    with preview.applied([2, 3]):
        before = judge.output_states([2, 3])
    assert preview._cache and preview._prober._prefix is not None
    preview.release(keep_dense=True)
    assert not preview._cache and not preview._captured and preview._prober._prefix is not None
    preview.release()
    assert preview._prober._prefix is None
    with preview.applied([2, 3]):
        torch.testing.assert_close(judge.output_states([2, 3]), before, atol=0, rtol=0)


def test_a_run_leaves_no_preview_memory_behind_in_its_scores():
    """The selection's scores keep the preview referenced (they compute on demand); after the run
    it holds neither fits nor dense outputs."""
    loaded = build_tiny("llama", layers=6, seed=36)
    result = miprun.prune(loaded, n=2, calib="self", num_samples=4, seq_len=12, heal_samples=24, save=False)
    assert result.report["selection"]["info"]["heal_preview"]["cuts_fitted"] > 0
    import gc

    from miprun.healing_preview import HealPreview

    gc.collect()
    previews = [o for o in gc.get_objects() if type(o) is HealPreview and o.model is result.model]
    assert previews, "the scores keep the run's preview referenced"
    assert all(not p._cache and not p._captured and p._prober._prefix is None for p in previews)


def test_run_from_replays_only_the_blocks_before_it():
    """``output_states(..., reuse_prefix=True, run_from=k)`` runs block k (its hooks fire) and gives
    the output a full run gives."""
    loaded = build_tiny("llama", layers=6, seed=35)
    prober = Prober(loaded.model, loaded.adapter, JUDGE)
    prober.output_states(reuse_prefix=True)
    preview = LinearHealer().preview(loaded.model, loaded.adapter, FIT)
    with preview.applied([3, 4]) as first:
        assert first == 2
        reused = prober.output_states([3, 4], reuse_prefix=True, run_from=first)
        full = Prober(loaded.model, loaded.adapter, JUDGE).output_states([3, 4])
        stale = prober.output_states([3, 4], reuse_prefix=True)  # block 2 replayed: its fit never acts
    torch.testing.assert_close(reused, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stale, full, atol=1e-4)


def test_forward_until_stops_a_pass_after_the_module_and_leaves_no_hook_behind():
    """Hooks registered on the module before the call still see its output; later blocks never
    run; the model's own forward is untouched afterwards."""
    loaded = build_tiny("llama", layers=4, seed=37)
    ran: list[int] = []
    handles = [block.register_forward_hook(lambda m, a, out, i=i: ran.append(i)) for i, block in enumerate(loaded.adapter.blocks)]
    forward_until(loaded.adapter.blocks[1], lambda: loaded.adapter.backbone(input_ids=JUDGE, use_cache=False))
    assert ran == [0, 1]
    ran.clear()
    loaded.adapter.backbone(input_ids=JUDGE, use_cache=False)
    assert ran == [0, 1, 2, 3]
    for handle in handles:
        handle.remove()


def test_the_engine_fits_the_preview_on_healing_sequences_the_selection_does_not_judge(monkeypatch):
    """The preview fits on 4 tokens per input of the FFN fit (4 × 64 / 12 → 22 sequences here),
    of the healing sequences that are not calibration ones (12 here: all of them), within its memory
    budget for dense block outputs and never on fewer sequences than the calibration's."""
    import miprun.engine as engine

    loaded = build_tiny("llama", layers=4, seed=36)
    heal_ids = torch.cat([JUDGE, FIT])  # the first healing sequences are the calibration ones, as in a run

    class Plan:
        granularity = "block"

    assert engine.preview_sequences(loaded.model, loaded.adapter, JUDGE) == 22
    preview = _preview(LinearHealer(), Plan(), loaded.model, loaded.adapter, JUDGE, heal_ids, None, None)
    assert torch.equal(preview.fit_ids, FIT)  # every healing sequence but the calibration ones
    per_sequence = 4 * 12 * 32 * 4  # blocks × tokens × hidden × bytes of float32
    monkeypatch.setattr(engine, "PREVIEW_BYTES", 6 * per_sequence)
    assert engine.preview_sequences(loaded.model, loaded.adapter, JUDGE) == 6
    monkeypatch.setattr(engine, "PREVIEW_BYTES", per_sequence)
    assert engine.preview_sequences(loaded.model, loaded.adapter, JUDGE) == 4  # never below the calibration's
    notes = []

    class Notes(Reporter):
        def note(self, line):
            notes.append(line)

    assert _preview(LinearHealer(), Plan(), loaded.model, loaded.adapter, JUDGE, JUDGE, None, Notes()) is None
    assert notes == ["the selection judges plain removal: every healing sequence is also a calibration sequence, "
                     "so none is left to fit a preview on; raise --heal-samples"]


def _linear_in_the_ffn_before(loaded, block: int, scale: float = 8.0) -> None:
    """Make block ``block`` add ``added·(Q − I)``, ``added`` what block ``block − 1``'s FFN added
    (made ``scale`` times larger) and ``Q`` orthogonal: removing the block loses a large update that a
    refit of block ``block − 1``'s down projection restores exactly. The block's own ``forward`` is
    replaced (an instance attribute), so skipping it removes the whole effect."""
    width = loaded.model.config.hidden_size
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(3)))
    down = loaded.adapter.blocks[block - 1].mlp.down_proj
    with torch.no_grad():
        down.weight.mul_(scale)
    added = {}
    down.register_forward_hook(lambda m, a, out: added.update(value=out))
    target = loaded.adapter.blocks[block]
    original = target.forward

    def forward(hidden_states, *args, **kwargs):
        out = original(hidden_states, *args, **kwargs)
        new = hidden_states + added["value"] @ (q - torch.eye(width))
        return (new, *out[1:]) if isinstance(out, tuple) else new

    target.forward = forward


def test_the_default_chooses_the_block_whose_removal_heals_exactly(text_file):
    """Block 3 adds a linear function of what block 2's FFN added, so its removal heals exactly but
    costs more than another block's when nothing heals. The default selection, which judges the healed model,
    removes it; told to judge plain removal (``-o scorer.healed=false``), it removes another."""
    common = dict(n=1, calib=str(text_file), num_samples=4, seq_len=16, save=False, check=False)
    models = [build_tiny("llama", layers=5, seed=37) for _ in range(2)]  # a run edits its model
    for loaded in models:
        _linear_in_the_ffn_before(loaded, 3)
    plain = miprun.prune(models[0], options={"scorer": {"healed": False}}, heal="none", **common)
    healed = miprun.prune(models[1], **common)
    assert plain.selection.blocks != [3] and healed.selection.blocks == [3]
    preview = healed.report["selection"]["info"]["heal_preview"]
    assert preview["cuts_fitted"] >= 4 and preview["fit_sequences"] == 16  # 4 tokens per FFN input: 4 × 64 / 16


def test_a_cut_at_block_0_the_healer_refuses_is_judged_as_plain_removal():
    """OPT with a projected embedding (``word_embed_proj_dim`` ≠ hidden size): no map can be folded
    into the embedding, so the preview leaves a cut at block 0 unhealed instead of failing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from miprun.models.adapters import adapter_for

    torch.manual_seed(38)
    config = AutoConfig.for_model("opt", hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                                  max_position_embeddings=128, word_embed_proj_dim=16, vocab_size=80)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(model)
    preview = LinearHealer().preview(model, adapter, FIT)
    judge = Prober(model, adapter, JUDGE)
    with preview.applied([0, 2]) as first:
        got = judge.output_states([0, 2])
    assert first == 0 and preview.info()["cuts_fitted"] == 1  # only the cut at block 2
    with LinearHealer(sequential=False, after_cut=False).applied(model, adapter, [2], FIT), torch.no_grad():
        expected = judge.output_states([0, 2])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_default_selects_for_the_healed_model_on_every_architecture(architecture, text_file):
    """Every family miprun prunes runs the heal-aware default end to end: the preview fits the cuts
    the search asks about (a refit, Gemma's through the norm, Mixtral's map, block 0's embedding map)."""
    result = miprun.prune(build_tiny(architecture, layers=5, seed=39), n=2, calib=str(text_file), num_samples=4,
                          seq_len=16, heal_samples=12, save=False, check=False)
    preview = result.report["selection"]["info"]["heal_preview"]
    assert preview["cuts_fitted"] >= 5 and preview["fit_sequences"] == 8  # every healing sequence not calibrated on (12 − 4)
    assert result.report["surgery"]["healing"]["cuts"] and result.adapter.num_blocks == 3


@pytest.mark.parametrize("architecture", ["llama", "gemma2", "gpt2"])
def test_healing_replays_the_dense_outputs_the_run_computed(architecture):
    """Probers made with the run's context (the preview's dense pass, the race's reference runs)
    share their block outputs (``context.dense``); healing told them (``known=``) skips
    recomputing those batches — only block a − 1 and the refitted blocks after the cut run there —
    and folds the same weights as healing that recomputes everything."""
    from miprun.contracts import RunContext
    from miprun.probing import KnownOutputs

    heal_ids = torch.cat([JUDGE, FIT])  # 4 healing batches: the first a race's chunk, the last 3 the preview's
    blocks = [2, 3]
    folded, computed = [], []
    for reuse in (False, True):
        loaded = build_tiny(architecture, layers=6, seed=36)
        before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
        healer = LinearHealer()
        context = RunContext(loaded.model, loaded.adapter, JUDGE, dense=KnownOutputs(2**30))
        preview = healer.preview(loaded.model, loaded.adapter, FIT, context=context)
        with preview.applied(blocks):  # the preview's dense pass, as selection makes it
            pass
        Prober(loaded.model, loaded.adapter, JUDGE, context=context).output_states(reuse_prefix=True)  # a race's chunk
        runs = []
        handle = ffn_output_modules(loaded.adapter, 0)[0].register_forward_hook(lambda *args, runs=runs: runs.append(1))
        healer.heal(loaded.model, loaded.adapter, blocks, heal_ids, known=context.dense if reuse else None)
        handle.remove()
        computed.append(len(runs))
        folded.append({name: p.detach().clone() for name, p in loaded.model.named_parameters()})
    # block 0 computes for every batch (and, once per block class, to learn its output format), or not at all
    assert computed[0] >= 4 and computed[1] == 0
    assert len(context.dense(JUDGE)) == len(context.dense(FIT[4:8])) == 6 and context.dense(FIT[:3]) is None
    assert any(not torch.equal(before[name], value) for name, value in folded[1].items())  # healing changed weights
    for name, value in folded[0].items():
        torch.testing.assert_close(folded[1][name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_the_run_keeps_dense_outputs_within_its_budget_and_lets_go_of_them():
    from miprun.probing import KnownOutputs

    outputs = [torch.zeros(2, 3, 4) for _ in range(5)]  # 5 blocks × 96 bytes
    known = KnownOutputs(budget=2 * 5 * 96)
    for batch in (FIT[:2], FIT[2:4], FIT[4:6]):
        known.add(batch, outputs)
    assert known(FIT[:2]) is outputs and known(FIT[2:4]) is outputs and known(FIT[4:6]) is None  # the third: no room
    assert known(FIT[:2].clone()) is outputs and known(FIT[:1]) is None  # by token ids, not by tensor
    known.clear()
    assert known(FIT[:2]) is None and known.bytes == 0
