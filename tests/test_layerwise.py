"""Layer-wise execution (miprun.models.layerwise, miprun.models.sweep): blocks read from the
checkpoint as they run give the same states, scores, selections and checkpoints as the model in
memory, within a memory budget smaller than the model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHITECTURES, EXPERTS, build_tiny
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import miprun
from miprun.collectors.hidden_states import HiddenStatesCollector
from miprun.errors import MiprunError
from miprun.models.checkpoint_files import CheckpointTensors
from miprun.models.layerwise import layerwise_loader, load_layerwise, parse_bytes
from miprun.models.loading import load_model
from miprun.probing import Prober


def saved_tiny(tmp_path, model_type="llama", layers=6, seed=0):
    """A tiny random model saved as a checkpoint directory; (directory, in-memory LoadedModel)."""
    loaded = build_tiny(model_type, layers=layers, seed=seed)
    directory = tmp_path / f"tiny-{model_type}"
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory, loaded


def tensors_of(directory):
    files = sorted(directory.glob("*.safetensors"))
    return {name: value for file in files for name, value in load_file(file).items()}


IDS = torch.randint(4, 80, (6, 24), generator=torch.Generator().manual_seed(3))


# transformers merges these families' per-expert tensors on load (gpt-oss stores its experts stacked, as the model holds them)
STREAMED = [a for a in ARCHITECTURES if a not in EXPERTS or a == "gpt_oss"]


@pytest.mark.parametrize("model_type", STREAMED)
def test_layerwise_states_scores_and_loss_equal_the_model_in_memory(tmp_path, model_type, one_thread):
    directory, memory = saved_tiny(tmp_path, model_type)
    memory = load_model(str(directory))  # the same weights as the layer-wise copy reads
    layered = load_layerwise(str(directory))
    loader = layerwise_loader(layered.model)
    assert all(p.is_meta for p in layered.adapter.blocks[0].parameters())

    collector = HiddenStatesCollector(max_tokens=0, batch_size=4)
    dense = collector.collect(memory.model, memory.adapter, IDS).states
    streamed = collector.collect(layered.model, layered.adapter, IDS).states
    for a, b in zip(dense, streamed):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert loader.reads <= 6 + 1  # one read per block for all batches (+1: learning the block's output format)

    in_memory = Prober(memory.model, memory.adapter, IDS, batch_size=4)
    layer_wise = Prober(layered.model, layered.adapter, IDS, batch_size=4)
    sets = [(), (2,), (1, 4), (0, 5)]
    expected = [in_memory.output_states(s, reuse_prefix=True) for s in sets]
    got = layer_wise.output_states_many(sets, reuse_prefix=True)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert in_memory.loss((3,)) == pytest.approx(layer_wise.loss((3,)), rel=1e-6)
    assert all(p.is_meta for block in layered.adapter.blocks for p in block.parameters())  # nothing left loaded


def test_checkpoints_whose_tensors_transformers_merges_are_refused(tmp_path):
    directory, _ = saved_tiny(tmp_path, "mixtral", layers=2)
    with pytest.raises(MiprunError, match="merges on load"):
        load_layerwise(str(directory))


def test_default_plan_under_a_budget_smaller_than_the_model_matches_the_in_memory_run(tmp_path):
    directory, _ = saved_tiny(tmp_path, layers=8)
    weights = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    common = dict(n=3, calib="self", num_samples=8, seq_len=32, seed=0)
    # layer-wise selection judges plain removal (no healing preview without the model in memory):
    # the in-memory run it must match is told to do the same
    memory = miprun.prune(str(directory), output=tmp_path / "memory", options={"scorer": {"healed": False}}, **common)
    budget = weights * 3 // 4
    layered = miprun.prune(str(directory), output=tmp_path / "layered", max_memory=f"{budget}B", **common)
    execution = layered.report["execution"]
    assert execution["mode"] == "layerwise" and "exceed --max-memory" in execution["reason"]
    assert execution["footprint_bytes"]["total"] <= budget < weights
    assert layered.selection.blocks == memory.selection.blocks
    assert layered.report["block_scores"] == memory.report["block_scores"]
    a, b = tensors_of(tmp_path / "memory"), tensors_of(tmp_path / "layered")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "layered").glob("*.safetensors"))) > 1  # about one block per shard
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "layered")
    assert reloaded.config.num_hidden_layers == 5
    assert memory.report["execution"]["mode"] == "in-memory"


def test_healing_layerwise_folds_the_same_map(tmp_path):
    directory, _ = saved_tiny(tmp_path, layers=6, seed=4)
    common = dict(method="shortgpt", n=2, calib="self", num_samples=6, seq_len=24, heal="linear", heal_samples=12)
    memory = miprun.prune(str(directory), output=tmp_path / "memory", **common)
    layered = miprun.prune(str(directory), output=tmp_path / "layered", layerwise=True, **common)
    assert layered.selection.blocks == memory.selection.blocks
    a, b = tensors_of(tmp_path / "memory"), tensors_of(tmp_path / "layered")
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    healed = [c["folded_into"] for c in layered.report["surgery"]["healing"]["cuts"]]
    assert healed == [c["folded_into"] for c in memory.report["surgery"]["healing"]["cuts"]]


def test_a_cut_at_block_0_of_a_tied_model_heals_the_same_layerwise(tmp_path, text_file):
    """The tied tiny model's cut at block 0 gets no fit of its own in either mode; the refits of the
    blocks after it, and so every saved tensor, are the same layer-wise as in memory."""
    directory, _ = saved_tiny(tmp_path, layers=6, seed=5)
    common = dict(selector="given", options={"selector": {"blocks": "0-1"}}, n=2, calib=str(text_file), num_samples=4,
                  seq_len=16, heal="linear", heal_samples=8)
    memory = miprun.prune(str(directory), output=tmp_path / "memory", **common)
    layered = miprun.prune(str(directory), output=tmp_path / "layered", layerwise=True, **common)
    a, b = tensors_of(tmp_path / "memory"), tensors_of(tmp_path / "layered")
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    for result in (memory, layered):
        cut = result.report["surgery"]["healing"]["cuts"][0]
        assert cut["folded_into"] is None and "shares the token embedding" in cut["not_fitted"]
        assert [after["refitted"] for after in cut["after_cut"]] == ["block 2 self_attn.o_proj", "block 3 self_attn.o_proj"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "layered").config.tie_word_embeddings


def test_perplexity_of_a_layerwise_model_equals_the_model_in_memory(tmp_path, text_file):
    from miprun.evaluation.perplexity import perplexity

    directory, _ = saved_tiny(tmp_path, layers=4)
    memory = load_model(str(directory))
    layered = load_layerwise(str(directory))
    kwargs = dict(text=text_file.read_text(), seq_len=16, max_windows=4)
    a = perplexity(memory.model, memory.tokenizer, **kwargs)
    b = perplexity(layered.model, layered.tokenizer, **kwargs)
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-6)


def test_layerwise_refusals_are_one_line_errors(tmp_path):
    directory, _ = saved_tiny(tmp_path, layers=4)
    with pytest.raises(MiprunError, match="removes whole blocks only"):
        miprun.prune(str(directory), granularity="neuron", n=8, layerwise=True, save=False)
    with pytest.raises(MiprunError, match="more than --max-memory"):
        miprun.prune(str(directory), n=1, max_memory="1KiB", calib="self", num_samples=2, seq_len=8, save=False)
    with pytest.raises(MiprunError, match="instead of --device-map"):
        miprun.prune(str(directory), n=1, layerwise=True, device_map="cpu", save=False)
    with pytest.raises(MiprunError, match="not available in layer-wise execution"):
        miprun.prune(str(directory), method="taylor", n=1, layerwise=True, calib="self", num_samples=2, seq_len=8,
                     save=False)
    with pytest.raises(MiprunError, match="not GGUF"):
        load_layerwise(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(MiprunError, match="no model.safetensors"):
        CheckpointTensors(tmp_path / "empty")


def test_a_damaged_block_is_refused_when_it_is_first_read(tmp_path):
    loaded = build_tiny("llama", layers=4)
    with torch.no_grad():
        loaded.adapter.blocks[2].mlp.up_proj.weight[0, 0] = float("nan")
    loaded.model.save_pretrained(tmp_path / "damaged")
    loaded.tokenizer.save_pretrained(tmp_path / "damaged")
    with pytest.raises(MiprunError, match="block 2 has non-finite weights .* mlp.up_proj.weight"):
        miprun.prune(str(tmp_path / "damaged"), n=1, layerwise=True, calib="self", num_samples=2, seq_len=8,
                     output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_memory_sizes_parse_with_units():
    assert parse_bytes("200MiB") == 200 * 2**20
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("4096") == 4096
    for bad in ("lots", "-1GB", "0", "12XB"):
        with pytest.raises(MiprunError, match="is not a size"):
            parse_bytes(bad)


def test_cli_runs_layerwise_and_records_it(tmp_path):
    from typer.testing import CliRunner

    from miprun.cli.main import app

    directory, _ = saved_tiny(tmp_path, layers=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", str(directory), "--prune", "1", "--layerwise", "--calib",
                                      "self", "--num-samples", "4", "--seq-len", "16", "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "miprun_report.json").read_text())
    assert report["execution"]["mode"] == "layerwise" and report["rerun"]["layerwise"] is True
    again = CliRunner().invoke(app, ["run", "--from-report", str(out), "--output", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "again" / "miprun_report.json").read_text())
    assert rerun["execution"]["mode"] == "layerwise" and rerun["selected_blocks"] == report["selected_blocks"]
    bad = CliRunner().invoke(app, ["run", "--model", str(directory), "--max-memory", "lots", "--output",
                                   str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "is not a size" in bad.output and not (tmp_path / "bad").exists()


def test_bfloat16_layerwise_equals_bfloat16_in_memory(tmp_path):
    directory, _ = saved_tiny(tmp_path, layers=4)
    memory = load_model(str(directory), dtype="bfloat16")
    layered = load_layerwise(str(directory), dtype="bfloat16")
    assert layered.model.get_input_embeddings().weight.dtype == torch.bfloat16
    a = Prober(memory.model, memory.adapter, IDS).output_states_many([(), (1, 2)], reuse_prefix=True)
    b = Prober(layered.model, layered.adapter, IDS).output_states_many([(), (1, 2)], reuse_prefix=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with torch.no_grad():
        block = layered.adapter.blocks[0]
        with layerwise_loader(layered.model).pinned(0):
            assert all(p.dtype == torch.bfloat16 for p in block.parameters())
