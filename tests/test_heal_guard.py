"""Healing is kept where it helps: healers undo what they folded, and the run saves plain removal
when the healed model is worse on the quality check's held-out windows (miprun.heal_guard)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny

import miprun
from miprun.contracts import NeuronSelection, Selection
from miprun.healers.neuron_refit import NeuronRefitHealer
from miprun.healing import LinearHealer
from miprun.models.weight_undo import WeightUndo
from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon
from miprun.surgeons.slice_ffn import SliceFFNSurgeon

IDS = torch.randint(0, 40, (8, 24), generator=torch.Generator().manual_seed(5))


def _same_weights(model, reference) -> bool:
    ours, theirs = model.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_weight_undo_restores_values_slices_and_references():
    layer = torch.nn.Linear(6, 4)
    original = copy.deepcopy(layer)
    undo = WeightUndo()
    kept = torch.tensor([0, 2, 5])
    undo.keep(layer, "weight", index=kept, axis=1)
    undo.keep(layer, "bias", "absent")
    with torch.no_grad():
        layer.weight.mul_(3.0)
        layer.bias.zero_()
    layer.weight = torch.nn.Parameter(layer.weight.detach()[:, kept].clone())  # a surgeon slices it afterwards
    undo.restore()
    assert torch.equal(layer.weight, original.weight[:, kept]) and torch.equal(layer.bias, original.bias)
    holder = torch.nn.Module()
    holder.shared = original.weight
    undo.point(holder, "shared")
    holder.shared = torch.nn.Parameter(torch.zeros(1))
    assert undo.restore() and holder.shared is original.weight
    small = WeightUndo(max_bytes=layer.bias.numel() * 4 + 1)  # room for the bias, not for the weight too
    small.keep(layer, "bias", "weight")
    before = layer.bias.detach().clone()
    with torch.no_grad():
        layer.bias.add_(1.0)
    assert not small.complete and not small.restore() and torch.equal(layer.bias, before + 1.0)


@pytest.mark.parametrize("blocks", [[1, 2], [0, 3]])
def test_block_healing_is_undone_exactly_after_the_blocks_are_gone(blocks):
    loaded = build_tiny("llama", layers=5, seed=3)  # tied embeddings: a cut at block 0 unties the head
    model, adapter = loaded.model, loaded.adapter
    plain = copy.deepcopy(model)
    healer = LinearHealer()
    healer.heal(model, adapter, blocks, IDS)
    assert not _same_weights(model, plain)
    RemoveBlocksSurgeon().apply(model, adapter, Selection(blocks))
    RemoveBlocksSurgeon().apply(plain, miprun.models.adapters.adapter_for(plain), Selection(blocks))
    assert healer.undo() and not healer.undo()  # once
    assert _same_weights(model, plain)
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.config.tie_word_embeddings


def test_width_healing_is_undone_exactly_after_the_neurons_are_sliced():
    loaded = build_tiny("gpt2", layers=2, seed=4)  # Conv1D: neurons are rows of the down projection; a bias
    model, adapter = loaded.model, loaded.adapter
    plain = copy.deepcopy(model)
    width = adapter.ffn_width(0)
    keep = {layer: sorted(torch.randperm(width, generator=torch.Generator().manual_seed(layer))[: width - 16].tolist())
            for layer in range(2)}
    healer = NeuronRefitHealer()
    healer.heal(model, adapter, NeuronSelection(keep), IDS)
    assert not _same_weights(model, plain)
    SliceFFNSurgeon().apply(model, adapter, NeuronSelection(keep))
    SliceFFNSurgeon().apply(plain, miprun.models.adapters.adapter_for(plain), NeuronSelection(keep))
    assert healer.undo()
    assert _same_weights(model, plain)


def test_the_default_saves_plain_removal_when_healing_loses_on_held_out_windows(text_file):
    """Four 16-token healing sequences over-fit a tiny random model: the named healer keeps the
    loss (and warns), the default undoes it and saves exactly what --heal none saves."""
    common = {"n": 2, "calib": str(text_file), "num_samples": 2, "seq_len": 16, "heal_samples": 4, "save": False}
    named = miprun.prune(build_tiny("llama", layers=5, seed=4), heal="linear", **common)
    record = named.report["surgery"]["healing"]["held_out"]
    assert record["kept"] == "healed" and record["healed_perplexity"] > record["plain_perplexity"]
    assert named.report["quality"]["pruned_perplexity"] == record["healed_perplexity"]
    default = miprun.prune(build_tiny("llama", layers=5, seed=4), **common)
    plain = miprun.prune(build_tiny("llama", layers=5, seed=4), heal="none", **common)
    assert default.selection.blocks == named.selection.blocks
    healing = default.report["surgery"]["healing"]
    assert healing["held_out"]["kept"] == "plain removal" and healing["undone"]["cuts"]
    assert healing["skipped"].startswith("not healed: healing made the result worse")
    assert default.report["quality"]["pruned_perplexity"] == pytest.approx(record["plain_perplexity"], rel=1e-5)
    assert plain.report["quality"]["data"] == default.report["quality"]["data"]  # --heal none: the same check windows
    if plain.selection.blocks == default.selection.blocks:  # plain removal of the same blocks: the same weights
        assert _same_weights(default.model, plain.model)
        assert plain.report["quality"]["pruned_perplexity"] == pytest.approx(record["plain_perplexity"], rel=1e-5)


def test_the_healing_check_is_reported_where_healing_helps(text_file, tmp_path):
    """Where the refit helps (a width run), the healed model beats plain removal on the held-out
    windows and the run says both figures in the report and the model card."""
    result = miprun.prune(build_tiny("llama", layers=3, seed=35), granularity="neuron", ratio=0.25, selector="random",
                          calib=str(text_file), num_samples=4, seq_len=16, heal_samples=8, output=tmp_path / "out")
    record = result.report["surgery"]["healing"]["held_out"]
    assert record["kept"] == "healed" and record["healed_perplexity"] < record["plain_perplexity"]
    assert result.report["surgery"]["healing"]["layers"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"{record['plain_perplexity']:.2f} plain removal: kept healed" in card


def test_parameter_counts_follow_an_untied_head_and_its_undo(text_file):
    """With ``untie_head`` a cut at block 0 of a tied model maps the embedding and unties the head:
    the report counts the dense model before (not the model as healing left it) and one embedding
    more than plain removal after — until the guard undoes the healing and ties the head again."""
    common = {"n": 2, "calib": str(text_file), "num_samples": 2, "seq_len": 16, "heal_samples": 4, "save": False,
              "selector": "given", "options": {"selector": {"blocks": "0-1"}, "healer": {"untie_head": True}}}
    dense = build_tiny("llama", layers=5, seed=0)
    embedding = dense.model.get_input_embeddings().weight.numel()
    plain = miprun.prune(build_tiny("llama", layers=5, seed=0), heal="none",
                         **{**common, "options": {"selector": {"blocks": "0-1"}}}).report["surgery"]
    kept = miprun.prune(build_tiny("llama", layers=5, seed=0), **common)  # healing wins here
    undone = miprun.prune(build_tiny("llama", layers=5, seed=1), **common)  # and loses here
    assert kept.report["surgery"]["healing"]["cuts"][0]["untied_head"]
    assert kept.report["surgery"]["parameters_before"] == plain["parameters_before"] == sum(
        p.numel() for p in dense.model.parameters())
    assert kept.report["surgery"]["parameters_after"] == plain["parameters_after"] + embedding
    assert "undone" in undone.report["surgery"]["healing"]
    assert undone.report["surgery"]["parameters_after"] == plain["parameters_after"]
    assert undone.model.get_output_embeddings().weight is undone.model.get_input_embeddings().weight
