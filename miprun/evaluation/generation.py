"""Generation samples (the paper's case study): the same prompts, greedy, dense vs pruned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from miprun.models.devices import input_device

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Photosynthesis is the process by which",
    "Here is a short story about a robot who learns to paint:",
    "Three tips for staying healthy are",
)
"""Prompts used when none are given: factual, explanatory, creative, list."""


def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    *,
    max_new_tokens: int = 48,
) -> list[dict[str, str]]:
    """Greedy continuations of ``prompts`` (one at a time, no padding), as ``{"prompt", "output"}``.

    The prompt is tokenized with the tokenizer's special tokens and the continuation is decoded
    without them; generation stops at EOS or after ``max_new_tokens``.
    """
    import torch

    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    samples = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.inference_mode():
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                temperature=None, top_p=None, top_k=None,
            )
        new_tokens = output[0, encoded["input_ids"].shape[1] :]
        samples.append({"prompt": prompt, "output": tokenizer.decode(new_tokens, skip_special_tokens=True)})
    return samples


def side_by_side(dense: list[dict[str, str]], pruned: list[dict[str, str]]) -> list[dict[str, str]]:
    """Join two sample lists on their prompts: ``{"prompt", "dense", "pruned"}`` rows."""
    by_prompt = {s["prompt"]: s["output"] for s in dense}
    return [{"prompt": s["prompt"], "dense": by_prompt.get(s["prompt"], ""), "pruned": s["output"]} for s in pruned]
