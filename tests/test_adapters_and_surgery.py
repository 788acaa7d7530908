"""Architecture adapters and the remove-blocks surgeon on tiny models of every supported architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHITECTURES, LAYOUT_TWINS, build_tiny
from transformers import AutoModelForCausalLM

from miprun.contracts import Selection
from miprun.errors import MiprunError
from miprun.models.adapters import adapter_for
from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon


@pytest.mark.parametrize("arch", ARCHITECTURES + LAYOUT_TWINS)
def test_removed_model_matches_a_model_built_without_those_blocks(arch, tmp_path):
    loaded = build_tiny(arch, layers=4)
    model, adapter = loaded.model, loaded.adapter
    assert adapter.num_blocks == 4
    ids = torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8]])
    kept = [adapter.blocks[i] for i in (0, 2)]
    summary = RemoveBlocksSurgeon().apply(model, adapter, Selection([1, 3]))
    assert summary["kept_blocks"] == [0, 2] and summary["parameters_after"] < summary["parameters_before"]
    assert adapter.num_blocks == 2 and list(adapter.blocks) == kept
    assert adapter.block_config.num_hidden_layers == 2
    for index, block in enumerate(adapter.blocks):
        assert all(m.layer_idx == index for m in block.modules() if hasattr(m, "layer_idx"))
    layer_types = getattr(adapter.block_config, "layer_types", None)
    if layer_types is not None:
        assert len(layer_types) == 2
    with torch.no_grad():
        in_memory = model(ids).logits
        generated = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert adapter_for(reloaded).num_blocks == 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, in_memory)
        assert torch.equal(reloaded.generate(ids, max_new_tokens=4, do_sample=False), generated)
    if model.config.tie_word_embeddings:
        assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("arch", ARCHITECTURES + LAYOUT_TWINS)
def test_removing_a_block_equals_skipping_it_in_the_forward_pass(arch):
    loaded = build_tiny(arch, layers=4)
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    adapter = loaded.adapter
    original = list(adapter.blocks)

    skipped = {}

    def skip(module, args, kwargs, output):
        return (args[0] if args else kwargs["hidden_states"],) if isinstance(output, tuple) else (args[0] if args else kwargs["hidden_states"])

    handle = original[2].register_forward_hook(skip, with_kwargs=True)
    with torch.no_grad():
        skipped["logits"] = loaded.model(ids, use_cache=False).logits
    handle.remove()
    RemoveBlocksSurgeon().apply(loaded.model, adapter, Selection([2]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids, use_cache=False).logits, skipped["logits"])


@pytest.mark.parametrize("arch", ARCHITECTURES + LAYOUT_TWINS)
def test_a_block_adds_exactly_the_outputs_its_family_registers(arch):
    """What healing folds into is where the spec says: a block's output is its input plus its
    registered attention output and FFN output (each through its registered norm, times the
    family's residual scale), checked against the model's own forward pass."""
    from miprun.models.adapters import attention_output_modules, ffn_output_modules, residual_scale

    loaded = build_tiny(arch, layers=4)
    adapter = loaded.adapter
    attention = attention_output_modules(adapter, 3)
    if attention is None:
        pytest.skip(f"'{arch}' registers no attention output added on its own (parallel blocks)")
    seen = {}

    def take(name):
        return lambda module, args, out: seen.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    def ends(module, args, kwargs, out):
        seen.update(entry=args[0] if args else kwargs["hidden_states"], exit=out[0] if isinstance(out, tuple) else out)

    output, norm = ffn_output_modules(adapter, 3)
    handles = [adapter.blocks[3].register_forward_hook(ends, with_kwargs=True),
               (norm if norm is not None else output).register_forward_hook(take("ffn")),
               (attention[1] if attention[1] is not None else attention[0]).register_forward_hook(take("attention"))]
    with torch.no_grad():
        loaded.model(torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8]]), use_cache=False)
    for handle in handles:
        handle.remove()
    added = seen["exit"] - seen["entry"]
    registered = (seen["ffn"].reshape(added.shape) + seen["attention"].reshape(added.shape)) * residual_scale(adapter)
    assert added.abs().max() > 1e-3
    torch.testing.assert_close(registered, added, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["glm4_moe", "glm4_moe_lite", "deepseek_v3", "deepseek_v2", "dots1", "exaone_moe"])
def test_a_count_of_first_dense_blocks_is_recounted_over_the_kept_blocks(arch, tmp_path):
    """GLM-4.5 (and its lite form), DeepSeek-V2/V3, dots.llm1 and EXAONE-MoE make their first k blocks
    dense (``first_k_dense_replace``):
    removing dense block 0 leaves no dense block, so k becomes 0 and the reloaded model is built
    with experts where the kept blocks have them, computing the same."""
    loaded = build_tiny(arch, layers=4)  # block 0 dense
    model = loaded.model
    assert model.config.first_k_dense_replace == 1 and not hasattr(model.model.layers[0].mlp, "experts")
    ids = torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8]])
    RemoveBlocksSurgeon().apply(model, loaded.adapter, Selection([0]))
    assert model.config.first_k_dense_replace == 0
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert all(hasattr(layer.mlp, "experts") for layer in reloaded.model.layers)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_a_range_of_expert_blocks_is_renumbered_at_both_ends(tmp_path):
    """ERNIE-4.5-MoE has experts in blocks ``moe_layer_start_index`` … ``moe_layer_end_index``: with
    experts in blocks 1–2 of 4, removing block 1 leaves them in new block 1 only (start 1, end 1),
    and the reloaded model puts experts exactly where the kept blocks have them."""
    loaded = build_tiny("ernie4_5_moe", layers=4)
    loaded.model.config.moe_layer_end_index = 2
    model = AutoModelForCausalLM.from_config(loaded.model.config).eval()  # experts in blocks 1 and 2
    adapter = adapter_for(model)
    assert [hasattr(layer.mlp, "experts") for layer in model.model.layers] == [False, True, True, False]
    ids = torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8]])
    RemoveBlocksSurgeon().apply(model, adapter, Selection([1]))
    assert (model.config.moe_layer_start_index, model.config.moe_layer_end_index) == (1, 1)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert [hasattr(layer.mlp, "experts") for layer in reloaded.model.layers] == [False, True, False]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    with pytest.raises(MiprunError, match=r"no block at or before moe_layer_end_index=1.*keep one of blocks 0–1"):
        RemoveBlocksSurgeon().apply(model, adapter, Selection([0, 1]))
    assert adapter.num_blocks == 3 and model.config.num_hidden_layers == 3  # the refusal changed nothing


@pytest.mark.parametrize("arch, kind", [("qwen3_5_text", "linear_attention"), ("lfm2", "conv")])
def test_a_hybrid_model_keeps_a_full_attention_block(arch, kind):
    """Qwen3.5 mixes linear-attention (Gated DeltaNet) and full-attention blocks, LFM2 short
    convolutions and attention; transformers cannot run a cache over the state-only blocks alone, so
    removing every attention block is refused in one line, and removing one of them is not."""
    loaded = build_tiny(arch, layers=4)  # blocks 0 and 2 full attention
    name = {"linear_attention": "linear-attention", "conv": "short-convolution"}[kind]
    with pytest.raises(MiprunError, match=rf"'{arch}' with {name} blocks only.*keep at least one attention block \(blocks 0, 2\)"):
        RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([0, 2]))
    RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([0, 1]))
    assert loaded.model.config.layer_types == ["full_attention", kind]


def test_surgeon_rejects_bad_indices():
    loaded = build_tiny("llama", layers=3)
    with pytest.raises(MiprunError, match="distinct indices in 0..2"):
        RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([3]))
    with pytest.raises(MiprunError, match="cannot remove all 3 blocks"):
        RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([0, 1, 2]))


def test_unsupported_architecture_is_named():
    from transformers import AutoConfig

    config = AutoConfig.for_model("mamba", hidden_size=16, num_hidden_layers=2, state_size=4, vocab_size=50)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(MiprunError, match=r"unsupported architecture 'mamba'; miprun supports .*llama") as refused:
        adapter_for(model)
    assert "laid out as registered" not in str(refused.value)  # no registered layout fits a state-space model


def test_an_unsupported_type_laid_out_like_a_registered_one_is_told_which():
    """BitNet's blocks are laid out as Llama's (its ternary weights are why it is not registered):
    the refusal names the registered types with that layout, most specific first (not Arcee's
    ungated FFN, whose names a gated one also has), so that a plugin can register it with their spec."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("bitnet", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=50, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(MiprunError, match=r"unsupported architecture 'bitnet'.*laid out as registered for "
                                          r"llama, mistral, qwen2: if its blocks add"):
        adapter_for(model)


@pytest.mark.parametrize("arch, ffn", [("opt", "fc1"), ("gpt_neox", "mlp.dense_h_to_4h"), ("gemma2", "mlp.up_proj"),
                                       ("phi3", "mlp.gate_up_proj")])
def test_neuron_pruning_where_the_ffn_allows_it(arch, ffn, text_file):
    import miprun
    from miprun.models.adapters import ffn_widths

    loaded = build_tiny(arch, layers=2)
    result = miprun.prune(loaded, granularity="neuron", n=16, calib=str(text_file), num_samples=2, seq_len=16,
                          selector="neuron-magnitude", save=False)
    assert ffn_widths(loaded.adapter) == [48, 48] and result.report["surgery"]["width_after"] == 48
    with torch.no_grad():
        assert torch.isfinite(loaded.model(torch.tensor([[1, 5, 9, 12]])).logits).all()


@pytest.mark.parametrize("arch, reason", [("bloom", "fixes every FFN"), ("mixtral", "mixture of experts")])
def test_neuron_pruning_is_refused_in_one_line_where_the_ffn_does_not_allow_it(arch, reason, text_file):
    import miprun

    with pytest.raises(MiprunError, match=rf"neuron pruning is not supported for '{arch}': .*{reason}.*; prune blocks instead"):
        miprun.prune(build_tiny(arch, layers=2), granularity="neuron", n=16, calib=str(text_file), num_samples=2,
                     seq_len=16, selector="neuron-magnitude", save=False)


def test_per_layer_config_lists_follow_the_kept_blocks(tmp_path):
    """SmolLM3 switches RoPE off per layer (``no_rope_layers``, default every fourth): removing
    blocks 1 and 2 keeps the flags of blocks 0 and 3, and the reloaded model computes the same."""
    loaded = build_tiny("smollm3", layers=4)
    assert loaded.model.config.no_rope_layers == [1, 1, 1, 0]
    ids = torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8]])
    RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection([1, 2]))
    assert loaded.model.config.no_rope_layers == [1, 0]
    loaded.model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, loaded.model(ids).logits)


def test_gpt_neo_attention_kinds_follow_the_kept_blocks(tmp_path):
    """GPT-Neo alternates global and local (windowed) attention, written as runs in
    ``attention_types``: removing global block 0 of [global, local, global, local] leaves
    [local, global, local], which the saved config must rebuild — on a sequence longer than the
    window, where the two kinds differ — and the blocks' cache positions (``layer_id``) are renumbered."""
    from miprun.models.adapters import kept_runs

    assert kept_runs([[["global", "local"], 2]], [1, 2, 3]) == [[["local"], 1], [["global"], 1], [["local"], 1]]
    assert kept_runs([[["global"], 3], [["local"], 1]], [0, 2, 3]) == [[["global"], 2], [["local"], 1]]
    loaded = build_tiny("gpt_neo", layers=4)
    model = loaded.model
    assert model.config.attention_layers == ["global", "local", "global", "local"] and model.config.window_size < 20
    ids = torch.arange(4, 24)[None, :]
    RemoveBlocksSurgeon().apply(model, loaded.adapter, Selection([0]))
    assert model.config.attention_types == [[["local"], 1], [["global"], 1], [["local"], 1]]
    assert [block.attn.attention.layer_id for block in loaded.adapter.blocks] == [0, 1, 2]
    with torch.no_grad():
        in_memory = model(ids).logits
        generated = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert [block.attn.attention_type for block in reloaded.transformer.h] == ["local", "global", "local"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, in_memory)
        assert torch.equal(reloaded.generate(ids, max_new_tokens=4, do_sample=False), generated)
    all_global = copy.deepcopy(reloaded.config)
    all_global.attention_types, all_global.attention_layers = [[["global"], 3]], ["global"] * 3
    wrong = AutoModelForCausalLM.from_config(all_global).eval()
    wrong.load_state_dict(reloaded.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(wrong(ids).logits, in_memory, atol=1e-4)  # the kinds matter on this sequence


def test_a_fused_gate_up_projection_is_sliced_and_weighed_chunk_by_chunk():
    """Phi-3 stacks gate and up in one ``gate_up_proj`` (2 × 64 rows, split with ``chunk``): neuron j
    is rows j and 64 + j. The magnitude baseline weighs both, and slicing keeps both."""
    from miprun.contracts import NeuronSelection
    from miprun.selectors.neuron_magnitude import neuron_weight_norms
    from miprun.surgeons.slice_ffn import SliceFFNSurgeon

    loaded = build_tiny("phi3", layers=1)
    (fused,), down = loaded.adapter.ffn_modules(0)
    assert fused.weight.shape[0] == 2 * down.weight.shape[1] == 128
    expected = (fused.weight[:64].pow(2).sum(1) + fused.weight[64:].pow(2).sum(1) + down.weight.pow(2).sum(0)).sqrt()
    torch.testing.assert_close(neuron_weight_norms(loaded.adapter, 0), expected.detach())
    keep = [3, 10, 40]
    rows = fused.weight.detach()[[3, 10, 40, 67, 74, 104]].clone()
    SliceFFNSurgeon().apply(loaded.model, loaded.adapter, NeuronSelection({0: keep}))
    assert torch.equal(loaded.adapter.ffn_modules(0)[0][0].weight, rows)
    assert loaded.model.config.intermediate_size == 3


def test_layer_index_lists_are_renumbered_and_a_sparse_step_is_refused(tmp_path):
    """Qwen3-MoE lists its dense (non-expert) layers by index (``mlp_only_layers``): removing block 1
    of [dense 0, dense 2] leaves block 2 as the new block 1, still dense (the old list would make the
    new block 2, an expert layer, dense), and the reloaded model computes the same. A model that
    makes every k-th layer sparse is refused in one line."""
    from conftest import build_tokenizer, tiny_config

    vocab = len(build_tokenizer())
    config = tiny_config("qwen3_moe", vocab)
    config.mlp_only_layers = [0, 2]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(model)
    ids = torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8]])
    RemoveBlocksSurgeon().apply(model, adapter, Selection([1]))
    assert model.config.mlp_only_layers == [0, 1]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert [hasattr(layer.mlp, "experts") for layer in reloaded.model.layers] == [False, False, True]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    stepped = tiny_config("qwen3_moe", vocab)
    stepped.decoder_sparse_step = 2
    model = AutoModelForCausalLM.from_config(stepped)
    with pytest.raises(MiprunError, match="decoder_sparse_step=2"):
        RemoveBlocksSurgeon().apply(model, adapter_for(model), Selection([1]))
