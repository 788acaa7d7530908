"""The saved config must rebuild the model being saved: a check before anything is written.

Pruning edits a model's modules and its config separately (the surgeon slices weights, the
architecture's :class:`~miprun.contracts.ArchitectureSpec` says which config fields follow: the
layer count, per-layer lists, layer-index lists, the FFN width). If a registration misses a field,
``save_pretrained`` writes a checkpoint that stock ``from_pretrained`` loads with some tensors
missing or mis-shaped — freshly initialised, with at most a warning. :func:`check_rebuilds` builds
the model's class from its config with empty (meta) weights, which costs no memory, and compares
every parameter's name and shape with the model in hand.
"""

from __future__ import annotations

import copy
from typing import Any

from miprun.errors import MiprunError


def check_rebuilds(model: Any) -> None:
    """Raise a one-line :class:`~miprun.errors.MiprunError` when ``model.config`` would not rebuild
    ``model``'s parameters (names and shapes), naming the first differences. A quantized model
    (its packed tensors are shaped by the quantizer, not the config) is not checked."""
    from accelerate import init_empty_weights

    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        return

    with init_empty_weights():
        fresh = type(model)._from_config(copy.deepcopy(model.config))
    held = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    built = {name: tuple(p.shape) for name, p in fresh.named_parameters(remove_duplicate=False)}
    differences = [f"{name} {held.get(name, 'absent')} here, {built.get(name, 'absent')} from the config"
                   for name in sorted(set(held) | set(built)) if held.get(name) != built.get(name)]
    if differences:
        more = f" (and {len(differences) - 2} more)" if len(differences) > 2 else ""
        raise MiprunError(f"the pruned model's config would not rebuild it — {'; '.join(differences[:2])}{more}; "
                          f"nothing was saved: the architecture's registration (ArchitectureSpec) misses a config "
                          f"field, please report it")
