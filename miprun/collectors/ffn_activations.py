"""Collector ``ffn-activations``: the FFN neurons of every layer, i.e. the input of each down projection.

For Llama-like blocks that input is ``act(gate_proj(x)) * up_proj(x)``, for GPT-2 ``act(c_fc(x))``
(read by the Conv1D ``c_proj``), for BERT ``GELU(intermediate.dense(x))`` (read by
``output.dense``): one scalar per neuron and token, exactly what removing a neuron takes away. A
forward pre-hook on the down projection keeps only the sampled token positions of each batch and
moves them to the CPU in float32 at once, so memory is layers × kept tokens × width × 4 bytes
(32 × 512 × 11 008 × 4 ≈ 0.72 GB for Llama-2-7B at the default 512 tokens), never the full
sequence; a run that would exceed ``max_bytes`` stops before the forward pass with the fix.
Positions are drawn like :class:`~miprun.collectors.hidden_states.HiddenStatesCollector` (seeded,
spread evenly over the samples, the first token left out by default).
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.collectors.hidden_states import HiddenStatesCollector
from miprun.contracts import FFNActivations
from miprun.errors import MiprunError
from miprun.models.devices import input_device

_STORE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FFNActivationsCollector:
    """Capture the down-projection input of every FFN for a token subsample.

    :param max_tokens: token positions kept in all (spread over the samples); 0 keeps every token.
    :param drop_first: leave out position 0 of every sample (the attention-sink token).
    :param batch_size: samples per forward pass.
    :param seed: seed for the token positions.
    :param store: CPU storage dtype: ``float32`` (default) or ``float16``/``bfloat16`` to halve memory.
    :param max_bytes: refuse to collect more than this many bytes (default 4 GiB).
    """

    name = "ffn-activations"

    def __init__(
        self,
        *,
        max_tokens: int = 512,
        drop_first: bool = True,
        batch_size: int = 4,
        seed: int = 0,
        store: str = "float32",
        max_bytes: int = 4 << 30,
    ) -> None:
        if store not in _STORE:
            raise MiprunError(f"ffn-activations option store={store!r} must be one of {', '.join(_STORE)}")
        if int(batch_size) < 1:
            raise MiprunError(f"ffn-activations option batch_size={batch_size!r} must be at least 1")
        self.max_tokens = int(max_tokens)
        self.drop_first = bool(drop_first)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.store = store
        self.max_bytes = int(max_bytes)

    def positions(self, num_samples: int, seq_len: int) -> torch.Tensor:
        """Token positions kept in each sample, (num_samples, k), the same for every layer."""
        sampler = HiddenStatesCollector(max_tokens=self.max_tokens, drop_first=self.drop_first, seed=self.seed)
        return sampler.positions(num_samples, seq_len)

    def collect(self, model: Any, adapter: Any, input_ids: torch.Tensor, *, progress: Any = None) -> FFNActivations:
        """Run the backbone over ``input_ids`` (n × L) and return every layer's FFN activations."""
        num_samples, seq_len = input_ids.shape
        keep = self.positions(num_samples, seq_len)
        layers = list(range(adapter.num_blocks))
        widths = [adapter.ffn_width(i) for i in layers]
        store = _STORE[self.store]
        needed = keep.numel() * sum(widths) * torch.empty((), dtype=store).element_size()
        if needed > self.max_bytes:
            raise MiprunError(
                f"ffn-activations would hold {needed / 2**30:.1f} GiB ({keep.numel()} tokens × {sum(widths)} "
                f"neurons); lower collector.max_tokens, use collector.store=float16 or raise collector.max_bytes"
            )
        parts: list[list[torch.Tensor]] = [[] for _ in layers]
        current: dict[str, torch.Tensor] = {}

        def hook(index: int):
            """A pre-hook keeping layer ``index``'s sampled positions."""

            def take(module, args, kwargs):
                """Gather the kept token positions of the down projection's input."""
                hidden = args[0] if args else kwargs["input"]
                if hidden.dim() == 2:  # OPT flattens (sequences × tokens) before its FFN
                    hidden = hidden.reshape(*current["shape"], hidden.shape[-1])
                rows = current["keep"].to(hidden.device)
                picked = torch.gather(hidden, 1, rows.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
                parts[index].append(picked.reshape(-1, hidden.shape[-1]).to("cpu", torch.float32).to(store))
            return take

        handles = [adapter.ffn_modules(i)[1].register_forward_pre_hook(hook(i), with_kwargs=True) for i in layers]
        device = input_device(model)
        batches = 0
        try:
            with torch.no_grad():
                for start in range(0, num_samples, self.batch_size):
                    batch = input_ids[start : start + self.batch_size]
                    current["keep"] = keep[start : start + self.batch_size]
                    current["shape"] = batch.shape
                    adapter.backbone(input_ids=batch.to(device), use_cache=False)
                    batches += 1
                    if progress is not None:
                        progress(len(batch))
        finally:
            for handle in handles:
                handle.remove()
        acts = [torch.cat(p) for p in parts]
        return FFNActivations(
            layers,
            acts,
            forward_passes=1,
            info={"tokens": int(acts[0].shape[0]) if acts else 0, "batches": batches, "widths": widths,
                  "drop_first": self.drop_first, "max_tokens": self.max_tokens, "store": self.store,
                  "bytes": int(sum(a.numel() * a.element_size() for a in acts))},
        )
