"""Healing refits the attention output projection of the block after each cut (miprun.healing)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import miprun
from miprun.healing import LinearHealer
from miprun.models.adapters import attention_output_modules, residual_scale
from miprun.probing import skipping

IDS = torch.randint(4, 80, (8, 16), generator=torch.Generator().manual_seed(41))

pytestmark = pytest.mark.usefixtures("float32_products")  # the fits' algebra, to float32 tolerances


def _stream_after_attention(loaded, index: int, skip: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Over ``IDS`` with ``skip`` removed: the stream entering block ``index`` and the stream after
    its attention (input + attention output), float64, sequences × tokens × hidden."""
    output, _ = attention_output_modules(loaded.adapter, index)
    captured = {}
    hooks = [loaded.adapter.blocks[index].register_forward_pre_hook(
                 lambda m, args, kwargs: captured.update(x=args[0] if args else kwargs["hidden_states"]), with_kwargs=True),
             output.register_forward_hook(lambda m, a, out: captured.update(z=out[0] if isinstance(out, tuple) else out))]
    try:
        with skipping(loaded.adapter, skip), torch.no_grad():
            loaded.model(IDS)
    finally:
        for hook in hooks:
            hook.remove()
    x = captured["x"].double()
    z = captured["z"].reshape(x.shape).double()
    return x, x + residual_scale(loaded.adapter) * z  # Granite scales the update before the add


def _relative_residual(mid: torch.Tensor, dense_mid: torch.Tensor, entering: torch.Tensor, batch: int = 4) -> float:
    """‖mid − dense_mid‖ / ‖dense_mid − entering‖ over the rows the fit weighs: each sequence's
    first token scaled so that its wanted update has the mean energy of the other tokens of its
    forward batch (the healer's ``sink="average"``)."""
    wanted = (dense_mid - entering).pow(2).sum(-1)
    weight = torch.ones_like(wanted)
    for start in range(0, wanted.shape[0], batch):
        part = wanted[start : start + batch]
        weight[start : start + batch, 0] = (part[:, 1:].mean() / part[:, 0]).sqrt()
    error = ((mid - dense_mid).pow(2).sum(-1) * weight.pow(2)).sum()
    return float((error / (wanted * weight.pow(2)).sum()).sqrt())


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "opt", "falcon", "bloom", "stablelm", "starcoder2", "granite"])
def test_the_block_after_each_cut_is_refitted_toward_the_dense_stream_after_its_attention(architecture):
    """Cuts [1] and [3, 4]: after each cut's own fit, the attention output projection of blocks 2
    and 5 is refitted on the model healed so far. On the saved weights the stream after block 5's
    attention is as far from the dense one as the summary says (the replay from block a − 1 reads
    what a full run reads), closer than before that refit; against a healer that does not refit after
    the cut, the first cut's fit is the same and the second is made on the model the first left."""
    dense = build_tiny(architecture, layers=6, seed=42)
    _, dense_mid = _stream_after_attention(dense, 5, [])
    healed, without = build_tiny(architecture, layers=6, seed=42), build_tiny(architecture, layers=6, seed=42)
    summary = LinearHealer().heal(healed.model, healed.adapter, [1, 3, 4], IDS)
    plain = LinearHealer(after_cut=False).heal(without.model, without.adapter, [1, 3, 4], IDS)
    path = healed.adapter.spec.attention_output
    assert summary["after_cut"] == {"module": path, "blocks": 2, "ridge": 0.3} and "after_cut" not in plain
    afters = [after for cut in summary["cuts"] for after in cut["after_cut"]]
    assert [a["refitted"] for a in afters] == [f"block 2 {path}", f"block 5 {path}"]
    assert all(a["relative_residual_after"] < a["relative_residual_before"] for a in afters)
    assert summary["cuts"][0]["relative_residual_after"] == pytest.approx(plain["cuts"][0]["relative_residual_after"], rel=1e-9)
    entering, mid = _stream_after_attention(healed, 5, [1, 3, 4])
    residual = _relative_residual(mid, dense_mid, entering)
    assert residual == pytest.approx(afters[1]["relative_residual_after"], rel=1e-5)
    changed = {name for (name, a), (_, b) in zip(healed.model.named_parameters(), without.model.named_parameters())
               if not torch.equal(a, b)}
    prefix, down = healed.adapter.blocks_path, healed.adapter.spec.ffn_output
    # block 0's fit is the same; block 2's own fit (for the cut [3, 4]) saw its refitted attention
    assert {name.rsplit(".", 1)[0] for name in changed} == {f"{prefix}.2.{path}", f"{prefix}.5.{path}",
                                                            f"{prefix}.2.{down}"}


def test_the_refits_chain_through_the_blocks_after_the_cut():
    """``after_cut=2``: blocks 3 and 4 after the cut [1, 2], the second fitted on the model with the
    first refitted (its capture replays the input of block 3 kept by the first's); recomputed by a
    full run from the saved weights, the stream after block 4's attention is where the report says."""
    dense = build_tiny("llama", layers=6, seed=47)
    _, dense_mid = _stream_after_attention(dense, 4, [])
    healed = build_tiny("llama", layers=6, seed=47)
    summary = LinearHealer(after_cut=2).heal(healed.model, healed.adapter, [1, 2], IDS)
    afters = summary["cuts"][0]["after_cut"]
    assert [a["refitted"] for a in afters] == ["block 3 self_attn.o_proj", "block 4 self_attn.o_proj"]
    entering, mid = _stream_after_attention(healed, 4, [1, 2])
    residual = _relative_residual(mid, dense_mid, entering)
    assert residual == pytest.approx(afters[1]["relative_residual_after"], rel=1e-5)
    assert afters[1]["relative_residual_after"] < afters[1]["relative_residual_before"]


def test_gemma_refits_through_its_attention_output_norm():
    """Gemma 2 normalises the attention output before the residual add: the refit acts before the
    norm (like the cut's own fit through the FFN output norm) and lowers the residual there."""
    loaded = build_tiny("gemma2", layers=5, seed=43)
    summary = LinearHealer().heal(loaded.model, loaded.adapter, [2], IDS)
    assert summary["after_cut"]["through_norm"] == "post_attention_layernorm"
    afters = summary["cuts"][0]["after_cut"]
    assert [a["refitted"] for a in afters] == ["block 3 self_attn.o_proj", "block 4 self_attn.o_proj"]
    assert all(a["relative_residual_after"] < a["relative_residual_before"] for a in afters)


def test_what_is_not_refitted_after_a_cut_is_said():
    """GPT-NeoX runs attention and FFN in parallel (no stream after the attention alone): the
    summary says so and only the projection before the cut is refitted; a cut at the last block has
    no block after it; ReplaceMe's map stays literal."""
    neox = build_tiny("gpt_neox", layers=4, seed=44)
    summary = LinearHealer().heal(neox.model, neox.adapter, [1], IDS)
    assert summary["after_cut"]["skipped"].startswith("'gpt_neox' runs attention and FFN in parallel (use_parallel_residual=True)")
    assert "after_cut" not in summary["cuts"][0]
    llama = build_tiny("llama", layers=4, seed=45)
    cuts = LinearHealer(after_cut=2).heal(llama.model, llama.adapter, [0, 3], IDS)["cuts"]
    assert [[a["refitted"] for a in c.get("after_cut", [])] for c in cuts] == \
        [["block 1 self_attn.o_proj", "block 2 self_attn.o_proj"], []]  # up to the next cut; none after the last block
    assert cuts[1]["relative_residual_after"] < cuts[1]["relative_residual_before"]
    assert "after_cut" not in LinearHealer(fit="map").heal(llama.model, llama.adapter, [1], IDS)


def test_the_run_option_turns_the_refit_after_the_cut_off(text_file):
    """``-o healer.after_cut=false`` gives the healing of earlier versions: only the projection
    before each cut changes; ``after_cut=3`` refits the three blocks after the cut (the default two)."""
    common = dict(n=1, calib=str(text_file), num_samples=4, seq_len=16, method="shortgpt", heal_samples=8, save=False,
                  heal="linear")  # named: kept even where the tiny fit loses to plain removal
    on = miprun.prune(build_tiny("llama", layers=5, seed=46), **common)
    off = miprun.prune(build_tiny("llama", layers=5, seed=46), options={"healer": {"after_cut": "false"}}, **common)
    assert on.selection.blocks == off.selection.blocks and on.selection.blocks[0] < 4
    assert "after_cut" in on.report["surgery"]["healing"]["cuts"][0]
    assert "after_cut" not in off.report["surgery"]["healing"]["cuts"][0]
    assert off.report["strategies"]["healer"]["options"]["after_cut"] is False
    three = miprun.prune(build_tiny("llama", layers=6, seed=46), options={"healer": {"after_cut": "3"}}, **common)
    first = three.selection.blocks[0]
    assert [a["refitted"].split()[1] for a in three.report["surgery"]["healing"]["cuts"][0]["after_cut"]] == \
        [str(b) for b in range(first + 1, min(first + 4, 6))]
    assert len(on.report["surgery"]["healing"]["cuts"][0]["after_cut"]) == min(2, 4 - on.selection.blocks[0])


def test_a_config_that_makes_blocks_sequential_gets_the_refit_after_the_cut():
    """GPT-NeoX registers ``use_parallel_residual`` as what makes its blocks parallel: with it false
    (attention, then FFN) the attention output ``attention.dense`` of the block after the cut is
    refitted, and the residual there drops."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from miprun.models.adapters import adapter_for

    config = AutoConfig.for_model("gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                                  num_attention_heads=4, max_position_embeddings=128, vocab_size=90,
                                  use_parallel_residual=False)
    torch.manual_seed(48)
    model = AutoModelForCausalLM.from_config(config).eval()
    cut = LinearHealer().heal(model, adapter_for(model), [2], IDS)["cuts"][0]
    assert [a["refitted"] for a in cut["after_cut"]] == ["block 3 attention.dense", "block 4 attention.dense"]
    assert all(a["relative_residual_after"] < a["relative_residual_before"] for a in cut["after_cut"])
