"""Parameter counts, checkpoint size, latency/throughput measurement and dense-vs-pruned comparison."""

from __future__ import annotations

import statistics

import pytest
from test_eval_helpers import tiny_model, tiny_tokenizer

from miprun.evaluation.size_speed import (
    SpeedConfig,
    checkpoint_size,
    compare,
    decode_throughput,
    model_size,
    parameter_counts,
    prefill_latency,
)
from miprun.models.adapters import adapter_for

HIDDEN = 32


def test_parameter_counts_tied_head():
    model = tiny_model(layers=3)
    vocab = len(tiny_tokenizer())
    counts = parameter_counts(model)
    per_block = sum(p.numel() for p in model.model.layers[0].parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # tied weight counted once
    assert counts["embeddings"] == vocab * HIDDEN
    assert counts["blocks"] == 3 * per_block and counts["per_block"] == per_block and counts["num_blocks"] == 3
    assert counts["tied_head"] is True and counts["head"] == 0
    assert counts["other"] == HIDDEN  # the final RMSNorm
    # every block, the norm, the (tied) output projection and one embedding row
    assert counts["per_forward_token"] == 3 * per_block + HIDDEN + vocab * HIDDEN + HIDDEN


def test_parameter_counts_untied_head():
    model = tiny_model(layers=2, tie=False)
    vocab = len(tiny_tokenizer())
    counts = parameter_counts(model)
    assert counts["tied_head"] is False and counts["head"] == vocab * HIDDEN
    assert counts["total"] == counts["embeddings"] + counts["blocks"] + counts["head"] + counts["other"]
    assert counts["per_forward_token"] == counts["blocks"] + counts["other"] + counts["head"] + HIDDEN


def test_counts_follow_block_removal():
    model = tiny_model(layers=3)
    adapter = adapter_for(model)
    before = parameter_counts(model, adapter)
    adapter.keep_blocks([0, 2])
    after = parameter_counts(model, adapter)
    assert after["num_blocks"] == 2
    assert before["total"] - after["total"] == before["per_block"]


def test_checkpoint_size_counts_weight_files(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    weights = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    assert checkpoint_size(tmp_path) == weights > 0
    assert checkpoint_size(tmp_path / "missing") is None and checkpoint_size(None) is None
    size = model_size(model, checkpoint=tmp_path)
    assert size["checkpoint_bytes"] == weights and size["dtype"] == "float32"
    assert size["memory_bytes"] == 4 * size["parameters"]["total"]


def test_latency_and_throughput_are_medians_of_the_timed_runs():
    model = tiny_model()
    config = SpeedConfig(prefill_len=8, decode_batch=2, decode_prompt=4, decode_tokens=3, warmup=1, repeats=3)
    prefill = prefill_latency(model, config)
    assert prefill["tokens"] == 8 and len(prefill["runs"]) == 3
    assert prefill["seconds"] == pytest.approx(statistics.median(prefill["runs"]), abs=1e-6)
    assert prefill["tokens_per_second"] == pytest.approx(8 / prefill["seconds"])
    decode = decode_throughput(model, config)
    assert decode["batch"] == 2 and decode["new_tokens"] == 3 and len(decode["runs"]) == 3
    assert decode["tokens_per_second"] == pytest.approx(2 * 3 / decode["seconds"])


def test_compare_reports_ideal_and_measured_speedups():
    def report(blocks, params, prefill_s, decode_tps, ckpt):
        return {
            "size": {"parameters": {"num_blocks": blocks, "total": params}, "checkpoint_bytes": ckpt},
            "speed": {"prefill": {"seconds": prefill_s}, "decode": {"tokens_per_second": decode_tps}},
        }

    out = compare(report(30, 300, 1.0, 100.0, 1000), report(24, 240, 0.85, 118.0, 800))
    assert out["blocks"] == {"dense": 30, "pruned": 24, "removed": 6}
    assert out["ideal_speedup"] == pytest.approx(30 / 24)
    assert out["prefill_speedup"] == pytest.approx(1 / 0.85)
    assert out["decode_speedup"] == pytest.approx(1.18)
    assert out["parameters"]["ratio"] == pytest.approx(0.8)
    assert out["checkpoint_bytes"]["ratio"] == pytest.approx(0.8)


def test_speed_of_a_model_with_a_short_context_is_measured_at_lengths_that_fit():
    """GPT-2-style learned positions end at the context (128 here): the default 512-token prefill
    indexed past the position table (an IndexError); the lengths are cut to fit, and recorded."""
    from conftest import build_tiny

    from miprun.evaluation.size_speed import SpeedConfig, speed

    loaded = build_tiny("gpt2", layers=2)
    assert loaded.model.config.n_positions == 128
    result = speed(loaded.model, SpeedConfig(prefill_len=512, decode_prompt=100, decode_tokens=64, warmup=0, repeats=1))
    assert result["config"]["prefill_len"] == 128 and result["prefill"]["tokens"] == 128
    assert result["config"]["decode_prompt"] == 64 and result["decode"]["new_tokens"] == 64
    assert result["prefill"]["tokens_per_second"] > 0 and result["decode"]["tokens_per_second"] > 0
