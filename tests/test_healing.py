"""Healing without training: a closed-form map per cut, folded into the weights (miprun.healing)."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, EXPERTS, LAYOUT_TWINS, assert_healed_exactly, build_tiny
from transformers import AutoModelForCausalLM

import miprun
from miprun.contracts import Selection
from miprun.errors import MiprunError
from miprun.healing import LinearHealer, cuts_of
from miprun.healing_fit import ridge_solver, sink_weights
from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon

IDS = torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8, 22, 17]])

pytestmark = pytest.mark.usefixtures("float32_products")  # the fits' algebra, to float32 tolerances


def test_cuts_are_maximal_runs_of_removed_blocks():
    assert cuts_of([5, 0, 1, 7, 6, 3]) == [(0, 1), (3, 3), (5, 7)]
    assert cuts_of([]) == []


def test_a_linear_cut_at_block_0_is_healed_exactly(monkeypatch):
    """Blocks 0 and 1 made exactly linear (x ↦ x·(I + A)): the map folded into the embedding
    reproduces the dense model's output after removing them."""
    loaded = build_tiny("llama", layers=4, seed=1)
    generator = torch.Generator().manual_seed(0)
    for index in (0, 1):
        matrix = torch.eye(32) + 0.2 * torch.randn(32, 32, generator=generator)
        block = loaded.adapter.blocks[index]

        def linear(hidden_states, *args, matrix=matrix, **kwargs):
            return hidden_states @ matrix

        monkeypatch.setattr(block, "forward", linear)
    with torch.no_grad():
        dense = loaded.model(IDS).logits
    ids = torch.randint(4, 80, (8, 12), generator=generator)
    summary = LinearHealer(ridge=0.0, untie_head=True).heal(loaded.model, loaded.adapter, [0, 1], ids)
    RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([0, 1]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(IDS).logits, dense, atol=1e-5, rtol=1e-5)
    cut = summary["cuts"][0]
    assert cut["folded_into"] == "model.embed_tokens" and cut["untied_head"]  # tiny llama ties its head
    assert cut["relative_residual_after"] < 1e-6 < cut["relative_residual_before"]
    assert not loaded.model.config.tie_word_embeddings


def test_a_cut_at_block_0_of_a_tied_model_keeps_the_head_tied_and_refits_the_blocks_after():
    """By default a map on a tied embedding is refused (it would untie the head and add the
    embedding's parameters): the cut's own fit is left out, named in the summary, the embedding and
    the tie are untouched, the parameter count is plain removal's, and the blocks after the cut are
    still refitted — the healed model's stream after them is closer to the dense one than plain
    removal's."""
    from miprun.models.parameters import count_parameters
    from miprun.probing import Prober

    healed, plain = build_tiny("llama", layers=6, seed=4), build_tiny("llama", layers=6, seed=4)
    ids = torch.randint(4, 80, (8, 12), generator=torch.Generator().manual_seed(4))
    embedding = healed.model.get_input_embeddings().weight.detach().clone()
    dense = Prober(plain.model, plain.adapter, ids).output_states([])
    summary = LinearHealer().heal(healed.model, healed.adapter, [0, 1], ids)
    cut = summary["cuts"][0]
    assert "shares the token embedding" in cut["not_fitted"] and "untie_head" in cut["not_fitted"]
    assert cut["folded_into"] is None and not cut["untied_head"]
    assert cut["relative_residual_after"] == cut["relative_residual_before"]  # plain removal for the cut itself
    assert [after["refitted"] for after in cut["after_cut"]] == ["block 2 self_attn.o_proj", "block 3 self_attn.o_proj"]
    assert all(a["relative_residual_after"] < a["relative_residual_before"] for a in cut["after_cut"])
    assert torch.equal(healed.model.get_input_embeddings().weight, embedding)
    assert healed.model.get_output_embeddings().weight is healed.model.get_input_embeddings().weight
    for loaded in (healed, plain):
        RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([0, 1]))
    assert count_parameters(healed.model) == count_parameters(plain.model)
    got = Prober(healed.model, healed.adapter, ids).output_states([])
    removed = Prober(plain.model, plain.adapter, ids).output_states([])
    assert float((got - dense).norm()) < float((removed - dense).norm())


def test_folding_equals_applying_the_map_at_run_time_and_reloads(tmp_path, text_file):
    loaded = build_tiny("llama", layers=6, seed=2)
    ids = torch.randint(4, 80, (8, 16), generator=torch.Generator().manual_seed(1))
    healer = LinearHealer(fit="map")
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    summary = healer.heal(loaded.model, loaded.adapter, [2, 3], ids)
    cut = summary["cuts"][0]
    assert cut["folded_into"] == "block 1 mlp.down_proj" and cut["blocks"] == [2, 3]
    assert cut["relative_residual_after"] < cut["relative_residual_before"]  # the fit helps on its own tokens
    changed = [n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"]
    # the same map applied at run time to the unchanged down projection gives the same logits
    down_weight = before["model.layers.1.mlp.down_proj.weight"]
    transform = torch.linalg.lstsq(down_weight.double().T, loaded.adapter.blocks[1].mlp.down_proj.weight.double().T).solution
    reference = build_tiny("llama", layers=6, seed=2)
    hook = reference.adapter.blocks[1].mlp.down_proj.register_forward_hook(
        lambda m, a, out: (out.double() @ transform).float())
    RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([2, 3]))
    RemoveBlocksSurgeon().apply(reference.model, reference.adapter, Selection([2, 3]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(IDS).logits, reference.model(IDS).logits, atol=1e-4, rtol=1e-4)
    hook.remove()
    loaded.model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 4
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, loaded.model(IDS).logits)
        assert reloaded.generate(IDS, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == IDS.shape[1] + 3


def test_heal_linear_through_prune_keeps_the_parameter_count_of_plain_removal(tmp_path, text_file):
    plain = miprun.prune(build_tiny("llama", layers=6, seed=3), n=2, calib=str(text_file), num_samples=4,
                         seq_len=16, method="shortgpt", heal="none", save=False)
    healed = miprun.prune(build_tiny("llama", layers=6, seed=3), n=2, calib=str(text_file), num_samples=4,
                          seq_len=16, method="shortgpt", heal="linear", heal_samples=8, output=tmp_path / "out")
    assert healed.selection.blocks == plain.selection.blocks
    healing = healed.report["surgery"]["healing"]
    assert healing["tokens"] == 8 * 16 and len(healing["cuts"]) >= 1 and "heal" in healed.report["timings"]
    # the same parameters as plain removal (a head is never untied by default)
    assert not any(cut["untied_head"] for cut in healing["cuts"])
    assert healed.report["surgery"]["parameters_after"] == plain.report["surgery"]["parameters_after"]
    # a cut at block 0 of a tied model with untie_head: exactly one embedding more than plain removal
    from miprun.models.parameters import count_parameters

    embedding = build_tiny("llama", layers=6, seed=3).model.get_input_embeddings().weight.numel()
    tied, reference = build_tiny("llama", layers=6, seed=3), build_tiny("llama", layers=6, seed=3)
    ids = torch.randint(4, 80, (4, 12), generator=torch.Generator().manual_seed(3))
    assert LinearHealer(untie_head=True).heal(tied.model, tied.adapter, [0, 1], ids)["cuts"][0]["untied_head"]
    for loaded in (tied, reference):
        RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([0, 1]))
    assert count_parameters(tied.model) == count_parameters(reference.model) + embedding
    assert healed.report["rerun"]["heal"] == "linear"
    from miprun.cli.run_cmd import rerun_arguments

    assert rerun_arguments(tmp_path / "out", [])["heal_samples"] == 8  # a healed run can be replayed
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 4
    assert healing["fit"] == "projection" and healing["ridge"] == 0.3
    mapped = miprun.prune(build_tiny("llama", layers=6, seed=3), n=2, calib=str(text_file), num_samples=4,
                          seq_len=16, method="shortgpt", heal="replaceme", heal_samples=8, save=False)
    assert mapped.report["surgery"]["healing"]["fit"] == "map" and mapped.report["rerun"]["heal"] == "replaceme"
    assert mapped.selection.blocks == plain.selection.blocks


def test_healing_refuses_what_it_cannot_fold_and_the_default_falls_back_to_plain_removal(text_file, monkeypatch):
    from dataclasses import replace

    from miprun.registry import get_registry

    with pytest.raises(MiprunError, match="healer 'linear' heals the remove-blocks surgeon's removal; this plan uses 'laco'"):
        miprun.prune(build_tiny("llama", layers=4), n=1, calib=str(text_file), seq_len=16, method="laco",
                     heal="linear", save=False)
    laco = miprun.prune(build_tiny("llama", layers=4), n=1, calib=str(text_file), seq_len=16, method="laco", save=False)
    assert "healer" not in laco.report["strategies"] and "laco" in laco.report["healing_reason"]
    with pytest.raises(MiprunError, match="unknown healer 'replacme' \\(did you mean 'replaceme'\\?\\)"):
        miprun.prune(build_tiny("llama", layers=4), n=1, calib=str(text_file), seq_len=16, heal="replacme", save=False)
    with pytest.raises(MiprunError, match="unknown healer 'lineer' \\(did you mean 'linear'\\?\\)"):
        miprun.prune(build_tiny("llama", layers=4), n=1, calib=str(text_file), seq_len=16, heal="lineer", save=False)
    for heal in ("linear", "replaceme"):  # found by the hostile-options property test: range() with step 0
        with pytest.raises(MiprunError, match="healer option batch_size=0 must be at least 1 sequence"):
            miprun.prune(build_tiny("llama", layers=4), n=1, calib=str(text_file), seq_len=16, heal=heal,
                         options={"healer": {"batch_size": 0}}, save=False)
    # an architecture with no FFN output to fold into: named healing fails in one line, the default
    # saves plain removal and says why
    entry = get_registry().architectures["llama"]
    monkeypatch.setattr(entry, "spec", replace(entry.spec, ffn_output=""))
    common = dict(n=1, calib=str(text_file), num_samples=4, seq_len=16, method="shortgpt", heal_samples=4, save=False)
    with pytest.raises(MiprunError, match="registers no FFN output"):
        miprun.prune(build_tiny("llama", layers=4), heal="linear", **common)
    plain = miprun.prune(build_tiny("llama", layers=4), heal="none", **common)
    fallback = miprun.prune(build_tiny("llama", layers=4), **common)
    assert fallback.report["surgery"]["healing"]["skipped"].startswith("not healed: 'llama' registers no FFN output")
    for (name, a), (_, b) in zip(plain.model.named_parameters(), fallback.model.named_parameters()):
        assert torch.equal(a, b), name


HEALABLE = ARCHITECTURES + LAYOUT_TWINS


def _compensable(loaded, removed: int):
    """Make block ``removed`` add exactly a linear function of what block ``removed − 1``'s FFN
    added: its output becomes ``input + added·(Q − I)``, ``Q`` orthogonal (so the stream after it
    is ``rest + added·Q``, which a refit — or a map, or for Gemma a refit through the norm whose
    gain is made uniform — reproduces exactly; through a norm only a length-preserving update is
    compensable, so there ``added`` includes the family's residual scale).
    Returns the hooks."""
    from miprun.models.adapters import ffn_output_modules, residual_scale

    output, norm = ffn_output_modules(loaded.adapter, removed - 1)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if name.endswith("down_proj_bias"):  # gpt-oss's expert biases start at zero: give the fold one to carry
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
    if norm is not None:
        with torch.no_grad():
            norm.weight.zero_()  # Gemma's (1 + w) gain: uniform 1
            if not norm(torch.ones(1, norm.weight.shape[-1])).any():
                norm.weight.fill_(1.0)  # OLMo 2's w gain: uniform 1
    width = loaded.model.config.hidden_size
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=torch.Generator().manual_seed(3)))
    added = {}
    source = norm if norm is not None else output
    scale = residual_scale(loaded.adapter) if norm is not None else 1.0
    take = source.register_forward_hook(
        lambda m, a, out: added.update(value=(out[0] if isinstance(out, tuple) else out) * scale))

    def replace_output(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        if (out[0] if isinstance(out, tuple) else out) is hidden:  # skipped (passed through): stays removed
            return out
        new = hidden + added["value"].reshape(hidden.shape) @ (q - torch.eye(width))  # OPT, experts: flattened
        return (new, *out[1:]) if isinstance(out, tuple) else new

    swap = loaded.adapter.blocks[removed].register_forward_hook(replace_output, with_kwargs=True)
    return [take, swap]


@pytest.mark.parametrize("architecture", HEALABLE)
def test_every_architecture_heals_an_exactly_compensable_cut_and_reloads(architecture, tmp_path):
    """A cut a linear fit can compensate exactly is healed to 1e-5 with the default healer (a
    refit, or a map folded into Mixtral's experts), folding equals applying at run time, and the
    checkpoint reloads with stock transformers and generates."""
    from miprun.probing import skipping

    loaded = build_tiny(architecture, layers=4, seed=21)
    hooks = _compensable(loaded, 2)
    ids = torch.randint(4, 80, (16, 12), generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        dense = loaded.model(IDS).logits
    hooked = build_tiny(architecture, layers=4, seed=21)
    hooked_extra = _compensable(hooked, 2)
    healer = get_healer()
    with healer.applied(hooked.model, hooked.adapter, [2], ids) as applied_summary, torch.no_grad():
        for hook in hooked_extra:  # fitted: the block is skipped now, as the surgeon will remove it
            hook.remove()
        with skipping(hooked.adapter, [2]):
            at_run_time = hooked.model(IDS).logits
    summary = healer.heal(loaded.model, loaded.adapter, [2], ids)
    for hook in hooks:
        hook.remove()
    RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([2]))
    cut = summary["cuts"][0]
    assert cut["fit"] == ("map" if architecture in EXPERTS else "projection") == applied_summary["cuts"][0]["fit"]
    assert cut["relative_residual_after"] < 1e-5 < cut["relative_residual_before"]
    reloaded = assert_healed_exactly(loaded.model, dense, at_run_time, IDS, tmp_path)
    assert reloaded.config.num_hidden_layers == 3


def test_a_dense_layer_among_expert_layers_is_healed_through_its_own_down_projection(tmp_path):
    """Qwen2-MoE's dense layers (``mlp_only_layers``) have a plain MLP where the others have routed
    and shared experts: a cut after one folds the map into that MLP's down projection, exactly."""
    from conftest import build_tokenizer, tiny_config

    from miprun.models.adapters import adapter_for
    from miprun.models.loading import LoadedModel

    config = tiny_config("qwen2_moe", len(build_tokenizer()))
    config.mlp_only_layers = [1]
    torch.manual_seed(21)
    model = AutoModelForCausalLM.from_config(config).eval()
    loaded = LoadedModel(model, build_tokenizer(), adapter_for(model), {"spec": "tiny-qwen2_moe", "kind": "memory"})
    assert not hasattr(model.model.layers[1].mlp, "experts") and hasattr(model.model.layers[2].mlp, "shared_expert")
    hooks = _compensable(loaded, 2)
    with torch.no_grad():
        dense = model(IDS).logits
    ids = torch.randint(4, 80, (16, 12), generator=torch.Generator().manual_seed(22))
    before = model.model.layers[1].mlp.down_proj.weight.clone()
    summary = get_healer().heal(model, loaded.adapter, [2], ids)
    for hook in hooks:
        hook.remove()
    RemoveBlocksSurgeon().apply(model, loaded.adapter, Selection([2]))
    cut = summary["cuts"][0]
    assert cut["fit"] == "map" and cut["relative_residual_after"] < 1e-5 < cut["relative_residual_before"]
    assert not torch.equal(model.model.layers[1].mlp.down_proj.weight, before)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, dense, atol=1e-5, rtol=1e-5)


def get_healer():
    """The default healer with no ridge, built through the registry as a run builds it."""
    from miprun.registry import get_registry

    return get_registry().create("healer", "linear", ridge=0.0)


@pytest.mark.parametrize("architecture", ["gpt2", "opt"])
def test_a_cut_at_block_0_with_learned_positions_maps_both_tables(architecture):
    """GPT-2 and OPT add learned positions to the token embedding: the map goes into both tables
    (their tiny models tie the head, so ``untie_head``), and folding equals applying it at run time."""
    from miprun.probing import skipping

    ids = torch.randint(4, 80, (8, 12), generator=torch.Generator().manual_seed(23))
    folded, hooked = build_tiny(architecture, layers=4, seed=24), build_tiny(architecture, layers=4, seed=24)
    summary = LinearHealer(untie_head=True).heal(folded.model, folded.adapter, [0, 1], ids)
    assert summary["cuts"][0]["fit"] == "map" and "," in summary["cuts"][0]["folded_into"]
    with LinearHealer(untie_head=True).applied(hooked.model, hooked.adapter, [0, 1], ids), torch.no_grad():
        with skipping(hooked.adapter, [0, 1]), skipping(folded.adapter, [0, 1]):
            torch.testing.assert_close(hooked.model(IDS).logits, folded.model(IDS).logits, atol=1e-4, rtol=1e-4)
    assert summary["cuts"][0]["relative_residual_after"] < summary["cuts"][0]["relative_residual_before"]


@pytest.mark.parametrize("fit", ["projection", "map"])
def test_fits_applied_at_run_time_equal_the_folded_fits_and_leave_the_weights(fit):
    ids = torch.randint(4, 80, (8, 16), generator=torch.Generator().manual_seed(5))
    folded, hooked = build_tiny("llama", layers=6, seed=6), build_tiny("llama", layers=6, seed=6)
    blocks = [0, 3, 4]  # a cut at block 0 (the embedding) and one after block 2
    LinearHealer(fit=fit, untie_head=True).heal(folded.model, folded.adapter, blocks, ids)
    weights = {name: p.detach().clone() for name, p in hooked.model.named_parameters()}
    from miprun.probing import skipping

    with LinearHealer(fit=fit, untie_head=True).applied(hooked.model, hooked.adapter, blocks, ids) as summary, torch.no_grad():
        with skipping(hooked.adapter, blocks), skipping(folded.adapter, blocks):
            torch.testing.assert_close(hooked.model(IDS).logits, folded.model(IDS).logits, atol=1e-4, rtol=1e-4)
    assert [c["blocks"] for c in summary["cuts"]] == [[0], [3, 4]]
    assert all(torch.equal(p, weights[name]) for name, p in hooked.model.named_parameters())  # nothing folded
    with torch.no_grad():  # and the hooks are gone
        assert not torch.allclose(hooked.model(IDS).logits, folded.model(IDS).logits)


def test_heal_aware_selection_keeps_the_candidate_that_heals_best(tmp_path, text_file):
    from miprun.data.calibration import load_calibration
    from miprun.healing import heal_aware_choice

    common = dict(n=2, calib=str(text_file), num_samples=4, seq_len=16, options={"scorer": {"screen": "off"}})
    chosen = miprun.prune(build_tiny("llama", layers=6, seed=7), heal="linear", heal_samples=8, heal_candidates=3,
                          output=tmp_path / "aware", **common)
    record = chosen.selection.info["heal_aware"]
    candidates = [row["candidate"] for row in record["candidates"]]
    assert len(candidates) == 3 and candidates[0] == record["selected_before"]
    losses = [row["healed_loss"] for row in record["candidates"]]
    assert chosen.selection.blocks == candidates[losses.index(min(losses))]
    assert chosen.report["selected_blocks"] == chosen.selection.blocks
    assert record["criterion"] == "held-out loss after healing" and (record["fit_sequences"], record["judged_sequences"]) == (7, 1)
    # the losses are those of each candidate healed on the first 7 sequences on its own (a fresh
    # model each time) and judged on the 8th, which the fit never saw
    loaded = build_tiny("llama", layers=6, seed=7)
    heal_ids = load_calibration(str(text_file), loaded.tokenizer, num_samples=8, seq_len=16, seed=0).input_ids
    _, again = heal_aware_choice(LinearHealer(), loaded.model, loaded.adapter, candidates[::-1], heal_ids)
    assert [row["healed_loss"] for row in again["candidates"]] == pytest.approx(losses[::-1], rel=1e-9)
    from miprun.probing import Prober

    fresh = build_tiny("llama", layers=6, seed=7)
    with LinearHealer().applied(fresh.model, fresh.adapter, candidates[0], heal_ids[:7]):
        assert Prober(fresh.model, fresh.adapter, heal_ids[7:]).loss(candidates[0]) == pytest.approx(losses[0], rel=1e-9)
    with pytest.raises(MiprunError, match="this run heals nothing \\(--heal none: plain removal\\); drop --heal-candidates"):
        miprun.prune(build_tiny("llama", layers=6), heal="none", heal_candidates=2, save=False, **common)
    with pytest.raises(MiprunError, match="--heal-samples 1 leaves none to judge on"):
        miprun.prune(build_tiny("llama", layers=6), heal="linear", heal_samples=1, heal_candidates=2, save=False, **common)


def test_independent_fitting_fits_every_cut_on_the_dense_model():
    ids = torch.randint(4, 80, (8, 16), generator=torch.Generator().manual_seed(8))
    single = build_tiny("llama", layers=6, seed=9)
    alone = LinearHealer().heal(single.model, single.adapter, [4], ids)["cuts"][0]
    both = build_tiny("llama", layers=6, seed=9)
    independent = LinearHealer(sequential=False).heal(both.model, both.adapter, [1, 4], ids)
    sequential = build_tiny("llama", layers=6, seed=9)
    chained = LinearHealer().heal(sequential.model, sequential.adapter, [1, 4], ids)
    assert independent["sequential"] is False and chained["sequential"] is True
    second = independent["cuts"][1]
    assert second["relative_residual_before"] == pytest.approx(alone["relative_residual_before"], rel=1e-12)
    assert second["relative_residual_after"] == pytest.approx(alone["relative_residual_after"], rel=1e-12)
    assert chained["cuts"][1]["relative_residual_before"] != pytest.approx(alone["relative_residual_before"], rel=1e-6)


def _hand_fit(loaded, keep: int, last: int, ids, sink: str = "average", batch: int = 4):
    """By hand: the down projection's inputs of block ``keep`` (a column of ones when it has a
    bias) and what it should add so that the stream leaving it equals the dense stream after
    block ``last``; each sequence's first row weighted so that its target has the mean energy of
    the other rows of its forward batch of ``batch`` sequences (``sink="skip"``: left out)."""
    captured = {}
    down = loaded.adapter.ffn_modules(keep)[1]
    hooks = [down.register_forward_hook(lambda m, a, out: captured.update(a=a[0], m=out)),
             loaded.adapter.blocks[keep].register_forward_hook(lambda m, a, out: captured.update(s=out[0] if isinstance(out, tuple) else out)),
             loaded.adapter.blocks[last].register_forward_hook(lambda m, a, out: captured.update(h=out[0] if isinstance(out, tuple) else out))]
    with torch.no_grad():
        loaded.model(ids)
    for hook in hooks:
        hook.remove()
    a = captured["a"].double()
    if down.bias is not None:
        a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype)], -1)
    y = (captured["h"] - captured["s"] + captured["m"]).double()
    weight = torch.ones(y.shape[:2], dtype=torch.float64)
    for start in range(0, y.shape[0], batch):
        energy = y[start : start + batch].pow(2).sum(-1)
        weight[start : start + batch, 0] = (energy[:, 1:].mean() / energy[:, 0]).sqrt() if sink == "average" else 0.0
    a, y = a * weight[..., None], y * weight[..., None]
    return a.reshape(-1, a.shape[-1]), y.reshape(-1, y.shape[-1])


@pytest.mark.parametrize("architecture,sink", [("llama", "average"), ("gpt2", "average"), ("llama", "skip")])
def test_the_projection_refit_is_the_least_squares_solution_and_folds_exactly(architecture, sink):
    """Without ridge the refitted down projection (and GPT-2's bias) is the weighted least-squares
    fit computed by hand — each sequence's first token weighted to its batch's mean target energy,
    or left out with ``sink="skip"`` — and the folded model gives the logits of the fit applied at
    run time."""
    ids = torch.randint(4, 80, (16, 12), generator=torch.Generator().manual_seed(11))
    loaded = build_tiny(architecture, layers=5, seed=12)
    a, y = _hand_fit(loaded, 1, 3, ids, sink=sink)
    expected = torch.linalg.lstsq(a, y).solution
    hooked = build_tiny(architecture, layers=5, seed=12)
    summary = LinearHealer(ridge=0.0, sink=sink).heal(loaded.model, loaded.adapter, [2, 3], ids)
    assert summary["sink"] == sink and summary["tokens"] == 16 * (12 if sink == "average" else 11)
    down = loaded.adapter.ffn_modules(1)[1]
    weight = down.weight.double().T if isinstance(down, torch.nn.Linear) else down.weight.double()
    if down.bias is not None:
        weight = torch.cat([weight, down.bias.double()[None]])
    torch.testing.assert_close(weight, expected, atol=1e-5, rtol=1e-4)
    assert summary["cuts"][0]["fit"] == "projection" and summary["fit"] == "projection"
    residual = float((a @ expected - y).norm() / y.norm())
    assert summary["cuts"][0]["relative_residual_after"] == pytest.approx(residual, rel=1e-4)
    from miprun.probing import skipping

    with LinearHealer(ridge=0.0, sink=sink).applied(hooked.model, hooked.adapter, [2, 3], ids), torch.no_grad():
        with skipping(hooked.adapter, [2, 3]), skipping(loaded.adapter, [2, 3]):
            torch.testing.assert_close(hooked.model(IDS).logits, loaded.model(IDS).logits, atol=1e-4, rtol=1e-4)


def test_a_large_ridge_keeps_the_weights_the_model_has():
    """The ridge shrinks toward the model's own weights (plain removal), not toward zero."""
    ids = torch.randint(4, 80, (8, 16), generator=torch.Generator().manual_seed(13))
    for fit in ("projection", "map"):
        loaded = build_tiny("llama", layers=5, seed=14)
        before = loaded.adapter.ffn_modules(1)[1].weight.detach().clone()
        LinearHealer(fit=fit, ridge=1e9).heal(loaded.model, loaded.adapter, [2], ids)
        torch.testing.assert_close(loaded.adapter.ffn_modules(1)[1].weight, before, atol=1e-6, rtol=1e-5)
    with pytest.raises(MiprunError, match="unknown healing fit 'linear'; choose: projection, map"):
        LinearHealer(fit="linear")


def test_the_sink_weighs_as_one_token_of_the_other_tokens_mean_target_energy():
    """``average``: each sequence's first row, weighted, carries the mean target energy of the
    other rows of its batch; ``skip``, a first row without energy, or a sequence of one token: 0."""
    energy = torch.tensor([400.0, 1.0, 3.0, 0.0, 2.0, 6.0], dtype=torch.float64)  # 2 sequences × 3 tokens
    weights = sink_weights(energy, 2, "average")
    assert (weights.pow(2) * energy[[0, 3]])[0] == pytest.approx(12.0 / 4) and weights[1] == 0
    assert torch.equal(sink_weights(energy, 2, "skip"), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(sink_weights(energy[[0, 3]], 2, "average"), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(MiprunError, match="healer option sink='first' must be one of average, skip"):
        LinearHealer(sink="first")


def test_rows_added_to_a_factorised_ridge_system_solve_the_system_that_has_them():
    """The preview adds the sink rows of each cut to a system factorised without them: the solution
    is that of the system with them (the ridge relative to the other rows' mean Gram diagonal)."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(50, 8, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    rows, wanted = 30 * torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    prior = torch.randn(8, 4, generator=g, dtype=torch.float64)
    gram, cross = x.T @ x, x.T @ y + rows.T @ wanted
    ridge = 0.3 * float(gram.diagonal().mean())
    expected = torch.linalg.solve(gram + rows.T @ rows + ridge * torch.eye(8, dtype=torch.float64), cross + ridge * prior)
    torch.testing.assert_close(ridge_solver(gram, 0.3)(cross, prior, rows), expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(ridge_solver(gram, 0.3)(cross, prior), expected, rtol=1e-3)
