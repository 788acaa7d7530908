"""Where a model's inputs go: one answer for plain, dispatched (device_map) and offloaded models."""

from __future__ import annotations

from typing import Any

import torch

from miprun.errors import MiprunError


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


def output_head(model: Any) -> Any:
    """The model's language-model head (its output embedding module), or ``None`` when it does not
    expose one (a bare backbone)."""
    try:
        return model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def logits_batch(model: Any, tokens: int, most: int, budget: int, element_size: int | None = None) -> int:
    """Sequences of ``tokens`` tokens per forward batch whose logits take at most ``budget`` bytes
    (``element_size`` bytes an entry; the model's own when None), at most ``most``, at least one.
    The vocabulary is the head's rows, or the config's ``vocab_size`` where the head has no weight."""
    head = output_head(model)
    weight = getattr(head, "weight", None)
    vocab = weight.shape[0] if weight is not None else getattr(getattr(model, "config", None), "vocab_size", 0) or 0
    size = element_size or next(model.parameters()).element_size()
    return max(1, min(int(most), int(budget) // max(int(tokens) * int(vocab) * size, 1)))


def check_token_ids(ids: Any, model: Any, what: str) -> None:
    """Refuse, in one line, token ids the model's input embedding has no row for: a tokenizer
    that does not belong to the model (else an ``IndexError`` deep inside torch)."""
    embedding = input_embedding(model) if model is not None else None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is None or ids is None or len(ids) == 0:
        return
    largest = int(max(ids)) if not hasattr(ids, "max") else int(ids.max())
    if largest >= rows:
        raise MiprunError(f"the tokenizer gives {what} token id {largest}, but the model's embedding has {rows} rows: "
                          f"the tokenizer does not belong to this model; use the checkpoint's own tokenizer files")


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
