"""Neuron (width) pruning end to end: standard checkpoints for decoder (Linear, GPT-2 Conv1D) and
encoder (BERT) models, masking equals slicing, granularity checks, the CLI, and SmolLM2-135M."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import WORDS, build_tiny, build_tokenizer
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertForMaskedLM,
)

import miprun
from miprun.contracts import NeuronSelection
from miprun.errors import MiprunError
from miprun.granularity import neurons_to_remove
from miprun.models.adapters import adapter_for, ffn_widths
from miprun.models.loading import LoadedModel
from miprun.models.neuron_masks import masked_neurons
from miprun.plans import resolve_plan
from miprun.surgeons.slice_ffn import SliceFFNSurgeon

IDS = torch.tensor([[1, 5, 9, 12, 7, 30, 44, 8]])


pytestmark = pytest.mark.usefixtures("one_thread")


FAST = {"estimator": {"alpha": 2, "batch_size": 32, "mi_batches": 1}, "selector": {"seeds": 2, "kl_samples": 2}}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_neuron_run_saves_a_standard_checkpoint_that_reloads_with_identical_logits(tmp_path, text_file, arch):
    loaded = build_tiny(arch, layers=3)
    width = ffn_widths(loaded.adapter)[0]
    out = tmp_path / "pruned"
    result = miprun.prune(loaded, granularity="neuron", ratio=0.25, calib=str(text_file), num_samples=4, seq_len=24,
                          estimator="renyi", options=FAST, output=out)
    kept = width - round(0.25 * width)
    report = json.loads((out / "miprun_report.json").read_text())
    assert report["granularity"] == "neuron" and report["prune"]["neurons_per_layer"] == width - kept
    assert report["strategies"]["estimator"]["name"] == "neuron-renyi"
    assert report["strategies"]["selector"]["name"] == "mds-cluster"
    assert len(report["neuron_scores"]["seconds_per_layer"]) == 3
    assert len(report["selection"]["trace"]) == 2 and report["evaluations"]["forward_passes"] == 1 + 1 + 2
    surgery = report["surgery"]
    assert surgery["width_after"] == kept and 0.5 < surgery["relative_flops"] < 1.0
    assert surgery["relative_ffn_flops"] == pytest.approx(kept / width)
    assert all(len(v) == width - kept for v in report["removed_neurons"].values())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    field = "n_inner" if arch == "gpt2" else "intermediate_size"
    assert getattr(reloaded.config, field) == kept and ffn_widths(adapter_for(reloaded)) == [kept] * 3
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, result.model(IDS).logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_masking_neurons_equals_slicing_them(arch):
    loaded = build_tiny(arch, layers=2)
    width = ffn_widths(loaded.adapter)[0]
    generator = torch.Generator().manual_seed(0)
    keep = {i: sorted(torch.randperm(width, generator=generator)[: width // 2].tolist()) for i in range(2)}
    with torch.no_grad(), masked_neurons(loaded.adapter, keep):
        masked = loaded.model(IDS).logits
        full_after_hooks = None
    with torch.no_grad():
        full_after_hooks = loaded.model(IDS).logits
    assert not torch.allclose(masked, full_after_hooks)  # the hooks were removed on exit
    summary = SliceFFNSurgeon().apply(loaded.model, loaded.adapter, NeuronSelection(keep))
    assert summary["width_after"] == width // 2
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(IDS).logits, masked, atol=1e-5, rtol=1e-5)
    with pytest.raises(MiprunError, match="same number of neurons"):
        SliceFFNSurgeon().apply(loaded.model, loaded.adapter, NeuronSelection({0: [0, 1, 2]}))


def test_merging_a_copy_into_its_twin_preserves_the_output_and_masking_predicts_it():
    """Neuron 1 is made an exact copy of neuron 0 (same gate and up rows); removing it alone changes
    the output, merging it (β = 1) into neuron 0 does not — and the masked preview agrees."""
    loaded = build_tiny("llama", layers=1)
    adapter = loaded.adapter
    (gate, up), down = adapter.ffn_modules(0)
    with torch.no_grad():
        gate.weight[1] = gate.weight[0]
        up.weight[1] = up.weight[0]
        before = loaded.model(IDS).logits
    keep = {0: [k for k in range(64) if k != 1]}
    merges = {0: [(1, 0, 1.0)]}
    with torch.no_grad():
        with masked_neurons(adapter, keep):
            dropped = loaded.model(IDS).logits
        with masked_neurons(adapter, keep, merges):
            previewed = loaded.model(IDS).logits
    assert not torch.allclose(dropped, before, atol=1e-4)
    torch.testing.assert_close(previewed, before, atol=1e-5, rtol=1e-5)
    summary = SliceFFNSurgeon().apply(loaded.model, adapter, NeuronSelection(keep, merges=merges))
    assert summary["merged_neurons"] == 1 and summary["width_after"] == 63
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(IDS).logits, before, atol=1e-5, rtol=1e-5)


def test_mds_cluster_merge_option_runs_end_to_end(text_file):
    result = miprun.prune(build_tiny("llama", layers=2), granularity="neuron", n=16, calib=str(text_file),
                          num_samples=4, seq_len=24, estimator="gaussian",
                          options={"selector": {"merge": True, "seeds": 2, "kl_samples": 2}}, heal="none", save=False)
    assert result.report["surgery"]["merged_neurons"] == 32 and result.report["selection"]["info"]["merge"]
    assert all(len(pairs) == 16 for pairs in result.selection.merges.values())
    # healed (the default), the refit of the kept neurons replaces the merge compensation
    healed = miprun.prune(build_tiny("llama", layers=2), granularity="neuron", n=16, calib=str(text_file),
                          num_samples=4, seq_len=24, heal_samples=4, estimator="gaussian",
                          options={"selector": {"merge": True, "seeds": 2, "kl_samples": 2}}, save=False)
    assert healed.report["surgery"]["merged_neurons"] == 0 and healed.selection.info["merges_replaced_by_healing"]
    assert healed.report["removed_neurons"] == result.report["removed_neurons"]


def tiny_bert() -> LoadedModel:
    """A BERT-style encoder with an MLM head, built from a config (no download)."""
    tokenizer = build_tokenizer()
    config = AutoConfig.for_model("bert", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                                  pad_token_id=3)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).eval()
    return LoadedModel(model, tokenizer, adapter_for(model), {"spec": "tiny-bert", "kind": "memory"})


@pytest.mark.parametrize("selector, estimator", [("mds-cluster", "renyi"), ("mi-threshold", "gaussian")])
def test_the_same_pipeline_prunes_a_bert_encoder(tmp_path, text_file, selector, estimator):
    loaded = tiny_bert()
    assert loaded.adapter.model_type == "bert" and loaded.adapter.blocks_path == "bert.encoder.layer"
    options = FAST if selector == "mds-cluster" else None
    out = tmp_path / "bert"
    result = miprun.prune(loaded, granularity="neuron", n=16, calib=str(text_file), num_samples=4, seq_len=24,
                          selector=selector, estimator=estimator, options=options, output=out)
    if selector == "mds-cluster":  # the KL subsidiary condition ran on the MLM head's distribution
        assert result.report["selection"]["info"]["divergence"] == "kl"
    reloaded = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert reloaded.config.intermediate_size == 48
    assert reloaded.bert.encoder.layer[1].intermediate.dense.out_features == 48
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, result.model(input_ids=IDS).logits)


def test_weight_baselines_skip_collection_and_names_resolve_by_granularity(text_file):
    result = miprun.prune(build_tiny("qwen2", layers=2), granularity="neuron", n=8, calib=str(text_file),
                          num_samples=2, seq_len=16, selector="magnitude", save=False)
    assert result.report["strategies"]["selector"]["name"] == "neuron-magnitude"
    assert set(result.report["strategies"]) == {"selector", "healer", "surgeon"} and "collect" not in result.timings
    plan = resolve_plan(granularity="neuron", selector="random")
    assert plan.names["selector"] == "neuron-random"
    plan = resolve_plan(granularity="neuron", estimator="pearson")
    assert plan.names == {"collector": "ffn-activations", "estimator": "neuron-pearson", "scorer": "neuron-mi",
                          "selector": "mds-cluster", "healer": "neuron-linear", "surgeon": "slice-ffn"}
    assert plan.options["selector"]["seed"] == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: resolve_plan(granularity="neuron", selector="greedy"),
         "selector 'greedy' works at block granularity, not neuron; pass --granularity block"),
        (lambda: resolve_plan(granularity="neuron", estimator="ksg"), "estimator 'ksg' works at block granularity, not neuron"),
        (lambda: resolve_plan(selector="mds-cluster"),
         "selector 'mds-cluster' works at neuron granularity, not block; pass --granularity neuron"),
        (lambda: resolve_plan(collector="ffn-activations"), "collector 'ffn-activations' works at neuron granularity"),
        (lambda: resolve_plan(granularity="neuron", selector="magnitude", estimator="renyi"),
         "selector 'neuron-magnitude' reads no scores, so this run has no estimator; drop --estimator"),
        (lambda: resolve_plan(granularity="neuron", selector="mds-clustr"), "did you mean 'mds-cluster'"),
        (lambda: resolve_plan(granularity="neuron", estimator="renyy"), r"did you mean 'renyi'\?\)"),
        (lambda: resolve_plan(granularity="neuron", estimator="ksgg"),
         r"unknown estimator 'ksgg' \(did you mean 'ksg'\? it works at block granularity: pass --granularity block\)"),
        (lambda: miprun.prune(granularity="width"), "unknown granularity 'width'"),
        (lambda: neurons_to_remove([64, 64], 64, None), "would remove every FFN neuron"),
        (lambda: neurons_to_remove([64, 32], None, 0.5), "FFN widths differ"),
    ],
)
def test_granularity_mismatches_are_one_clear_line(call, message):
    with pytest.raises(MiprunError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_cli_runs_neuron_pruning_and_rejects_block_strategies(capsys, monkeypatch, tmp_path):
    from miprun.cli.main import main

    loaded = build_tiny("llama", layers=2)
    model_dir = tmp_path / "tiny"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(WORDS * 20))

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["miprun", "run", "--model", str(model_dir), "--calib", str(calib),
                                          "--num-samples", "2", "--seq-len", "16", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        return code, capsys.readouterr()

    code, captured = run("--granularity", "neuron", "--selector", "magnitude", "--ratio", "0.25",
                         "--output", str(tmp_path / "out"))
    assert code == 0 and "FFN width" in captured.out and "64 → 48" in captured.out
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.intermediate_size == 48
    code, captured = run("--granularity", "neuron", "--selector", "greedy", "--output", str(tmp_path / "bad"))
    errors = [line for line in captured.err.splitlines() if line.startswith("miprun: error:")]
    assert code == 2 and len(errors) == 1 and "--granularity block" in errors[0]
    assert not (tmp_path / "bad").exists()


@pytest.mark.integration
def test_smollm2_width_pruning_saves_a_loadable_checkpoint(tmp_path):
    """SmolLM2-135M, every FFN 1536 → 1229 by Gaussian-copula MI and Algorithm 1 on a small sample."""
    from miprun.models.loading import load_model

    out = tmp_path / "smol"
    result = miprun.prune(load_model("smollm2-135m"), granularity="neuron", ratio=0.2, num_samples=2, seq_len=64,
                          estimator="gaussian", selector="mi-threshold",
                          options={"collector": {"max_tokens": 96}}, output=out)
    assert result.report["surgery"]["width_after"] == 1229
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.intermediate_size == 1229
    assert reloaded.model.layers[0].mlp.down_proj.in_features == 1229
