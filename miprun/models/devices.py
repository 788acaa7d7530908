"""Where a model's inputs go: one answer for plain, dispatched (device_map) and offloaded models."""

from __future__ import annotations

from typing import Any

import torch


def input_device(model: Any) -> torch.device:
    """The device input ids must be on: where the model's input embedding runs.

    A plain model answers with its embedding weight's device. Under accelerate (``device_map``,
    CPU or disk offload) parameters may be meta tensors or sit on other devices; the embedding's
    hook names its execution device, which is the answer then. A model without parameters runs
    on the CPU.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hook = getattr(embedding, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", [hook]) if hook is not None else []:
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    for parameter in (embedding or model).parameters():
        if not parameter.is_meta:
            return parameter.device
    return torch.device("cpu")
