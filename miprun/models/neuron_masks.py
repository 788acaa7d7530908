"""Trying a neuron selection without editing weights: the removed FFN neurons masked out (used by
the ``mds-cluster`` selector to compare candidate selections; the ``slice-ffn`` surgeon makes the
same model by slicing)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch


@contextmanager
def masked_neurons(
    adapter: Any, keep: dict[int, list[int]], merges: dict[int, list[tuple[int, int, float]]] | None = None
) -> Iterator[None]:
    """Within the block, the model behaves as if only ``keep`` neurons existed: a forward pre-hook
    on each down projection zeroes the other neurons' activations (weights are untouched). With
    ``merges``, removed neuron j instead reads β × neuron k's activation, which is what adding
    β × column j to column k does after slicing."""
    handles = []
    for layer, kept in keep.items():
        _, down = adapter.ffn_modules(layer)
        mask_cpu = torch.zeros(adapter.ffn_width(layer))
        mask_cpu[torch.tensor(sorted(kept), dtype=torch.long)] = 1.0
        pairs = (merges or {}).get(layer, [])
        sources = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        targets = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        betas = torch.tensor([float(p[2]) for p in pairs])

        def zero_removed(module, args, kwargs, mask_cpu=mask_cpu, sources=sources, targets=targets, betas=betas):
            """Multiply the down projection's input by the keep mask (and route merged neurons)."""
            hidden = args[0] if args else kwargs["input"]
            masked = hidden * mask_cpu.to(hidden.device, hidden.dtype)
            if len(sources):
                masked[..., sources.to(hidden.device)] = hidden[..., targets.to(hidden.device)] * betas.to(hidden.device, hidden.dtype)
            return ((masked, *args[1:]), kwargs) if args else (args, {**kwargs, "input": masked})

        handles.append(down.register_forward_pre_hook(zero_removed, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
