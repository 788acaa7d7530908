"""Shared helpers for the evaluation tests: a tokenizer built locally and tiny random models.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in memory on a few
sentences, the models are random ``LlamaForCausalLM`` built from a config.
"""

from __future__ import annotations

import functools

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: Which statement best explains why photosynthesis is the foundation of most food webs?",
    "Answer: Sunlight is the source of energy for nearly all ecosystems.",
    "True, False, or Neither? Is this sentence positive or negative? yes no",
    " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor .",
]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A 400-token byte-level BPE with ``<bos>``/``<eos>``/``<pad>``, trained on :data:`CORPUS`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_model(layers: int = 2, seed: int = 0, tie: bool = True, context: int = 512):
    """A random Llama with hidden size 32 and ``layers`` blocks, sized to :func:`tiny_tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def test_tiny_tokenizer_round_trips():
    tok = tiny_tokenizer()
    ids = tok("The quick brown fox", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "The quick brown fox"
    assert tok.bos_token_id is not None and tok.eos_token_id is not None
