"""Where a model's inputs go: one answer for plain, dispatched (device_map) and offloaded models."""

from __future__ import annotations

from typing import Any

import torch


def accelerate_hooks(module: Any) -> list[Any]:
    """The accelerate hooks attached to ``module`` (a ``SequentialHook`` unpacked), or none."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def input_embedding(model: Any) -> Any:
    """The model's input embedding module, or ``None`` when it does not expose one."""
    try:
        return model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def input_device(model: Any) -> torch.device:
    """The device input ids must be on: where the model's input embedding runs.

    A plain model answers with its embedding weight's device. Under accelerate (``device_map``,
    CPU or disk offload) parameters may be meta tensors or sit on other devices; the execution
    device named by the embedding's (else the model's) hook is the answer then. Otherwise the first
    parameter that holds data, and the CPU for a model without any.
    """
    embedding = input_embedding(model)
    for module in (embedding, model):
        for hook in accelerate_hooks(module):
            device = getattr(hook, "execution_device", None)
            if device is not None:
                return torch.device(device)
    modules = (embedding, model) if embedding is not None else (model,)
    for module in modules:
        for parameter in module.parameters():
            if not parameter.is_meta:
                return parameter.device
    return torch.device("cpu")
