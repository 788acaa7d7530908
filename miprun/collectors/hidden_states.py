"""Collector ``hidden-states``: the residual stream at every block boundary.

Forward hooks on the blocks capture the input of block 0 and the output of every block — the
residual stream *before* the final norm — for the same token positions at every boundary, moved to
the CPU in float32 whatever the model's dtype or device. Because capture happens in hooks, the
same code runs on a model spread over devices by accelerate (``device_map="auto"``, offload). A
layer-wise model (:mod:`miprun.models.layerwise`) is run block-major instead — every batch through
one block before the next is read — with the same states as the result.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from miprun.contracts import BoundaryStates
from miprun.models.devices import input_device
from miprun.models.forwards import hidden_argument
from miprun.models.layerwise import layerwise_loader
from miprun.models.sweep import BlockSweep, Stream


def _hidden(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


class HiddenStatesCollector:
    """Capture block-boundary hidden states.

    :param max_tokens: keep at most this many tokens in all (spread evenly over the samples, the
        positions drawn with ``seed``); 0 keeps every token.
    :param drop_first: leave out position 0 of every sample (the attention-sink token, whose
        massive activations dominate distances).
    :param batch_size: samples per forward pass.
    :param seed: seed for the token positions.
    """

    name = "hidden-states"

    def __init__(self, *, max_tokens: int = 2048, drop_first: bool = True, batch_size: int = 4, seed: int = 0) -> None:
        self.max_tokens = max_tokens
        self.drop_first = drop_first
        self.batch_size = batch_size
        self.seed = seed

    def positions(self, num_samples: int, seq_len: int) -> torch.Tensor:
        """Token positions kept in each sample (the same for every boundary): (num_samples, k)."""
        first = 1 if self.drop_first and seq_len > 1 else 0
        available = seq_len - first
        per_sample = available if self.max_tokens <= 0 else min(available, math.ceil(self.max_tokens / num_samples))
        generator = torch.Generator().manual_seed(self.seed)
        rows = [torch.randperm(available, generator=generator)[:per_sample].sort().values + first for _ in range(num_samples)]
        return torch.stack(rows)

    def collect(self, model: Any, adapter: Any, input_ids: torch.Tensor, *, progress: Any = None) -> BoundaryStates:
        """Run the backbone over ``input_ids`` in batches and return the T + 1 boundary states."""
        num_samples, seq_len = input_ids.shape
        device = input_device(model)
        states = capture_boundaries(adapter, input_ids, self.positions(num_samples, seq_len),
                                    batch_size=self.batch_size, device=device, progress=progress)
        return BoundaryStates(
            states,
            forward_passes=1,
            info={"tokens": states[0].shape[0], "batches": math.ceil(num_samples / self.batch_size),
                  "drop_first": self.drop_first, "max_tokens": self.max_tokens},
        )


def _kept_rows(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The positions ``keep`` (batch × k) of ``hidden`` (batch × L × d) as float32 CPU rows."""
    rows = keep.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return torch.gather(hidden, 1, rows).reshape(-1, hidden.shape[-1]).to("cpu", torch.float32)


def capture_boundaries(
    adapter: Any, input_ids: torch.Tensor, keep: torch.Tensor, *, batch_size: int, device: Any, progress: Any = None
) -> list[torch.Tensor]:
    """One forward pass of the backbone over ``input_ids`` (n × L) in batches, capturing the residual
    stream at every block boundary at the positions ``keep`` (n × k, per sample).

    :returns: T + 1 float32 CPU tensors of shape (n·k, hidden), rows in sample-major order.
    """
    boundaries: list[list[torch.Tensor]] = [[] for _ in range(adapter.num_blocks + 1)]
    loader = layerwise_loader(adapter.model)
    if loader is not None:  # block-major: each block read once for all batches
        sweep = BlockSweep(adapter, loader, input_ids, batch_size, device)
        stream = Stream(frozenset())
        parts = [keep[start : start + batch_size] for start in range(0, input_ids.shape[0], batch_size)]

        def take_all(index: int) -> None:
            boundaries[index].extend(_kept_rows(hidden, rows) for rows, hidden in zip(parts, stream.states))

        sweep.run([stream], on_boundary=take_all)
        if progress is not None:
            progress(int(input_ids.shape[0]))
        return [torch.cat(parts) for parts in boundaries]
    current: dict[str, torch.Tensor] = {}

    def take(index: int, hidden: torch.Tensor) -> None:
        boundaries[index].append(_kept_rows(hidden, current["keep"]))

    def pre_hook(module, args, kwargs):
        take(0, _hidden(hidden_argument(args, kwargs)))

    handles = [adapter.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    for index, block in enumerate(adapter.blocks):
        handles.append(block.register_forward_hook(lambda m, a, out, i=index: take(i + 1, _hidden(out))))
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                batch = input_ids[start : start + batch_size]
                current["keep"] = keep[start : start + batch_size]
                adapter.backbone(input_ids=batch.to(device), use_cache=False)
                if progress is not None:
                    progress(len(batch))
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(parts) for parts in boundaries]
