"""Where inputs go: ``input_device`` on plain modules, models and models without an embedding."""

from __future__ import annotations

import torch
from conftest import build_tiny

from miprun.models.devices import accelerate_hooks, input_device, output_head


def test_input_device_of_plain_models_and_modules():
    loaded = build_tiny("llama", layers=2, seed=1)
    assert input_device(loaded.model) == torch.device("cpu")
    assert accelerate_hooks(loaded.model) == []
    # no get_input_embeddings: the first parameter that holds data; none at all: the CPU
    assert input_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert input_device(torch.nn.Sequential()) == torch.device("cpu")
    meta_first = torch.nn.Sequential(torch.nn.Linear(2, 2, device="meta"), torch.nn.Linear(2, 2))
    assert input_device(meta_first) == torch.device("cpu")


def test_input_device_follows_the_accelerate_hook_of_the_embedding():
    from accelerate.hooks import AlignDevicesHook, SequentialHook, add_hook_to_module

    loaded = build_tiny("llama", layers=2, seed=1)
    embedding = loaded.model.get_input_embeddings()
    add_hook_to_module(embedding, SequentialHook(AlignDevicesHook(execution_device="meta")))
    assert len(accelerate_hooks(embedding)) == 1
    assert input_device(loaded.model) == torch.device("meta")  # the hook's word, not the weight's device


def test_output_head_of_a_causal_lm_and_of_a_bare_backbone():
    loaded = build_tiny("llama", layers=2, seed=3)
    assert output_head(loaded.model) is loaded.model.lm_head
    assert output_head(loaded.model.model) is None  # the backbone alone has no head
    assert output_head(torch.nn.Linear(2, 2)) is None  # not a transformers model at all
