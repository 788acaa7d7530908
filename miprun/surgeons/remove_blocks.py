"""Surgeon ``remove-blocks``: delete whole blocks and keep the model loadable by stock transformers."""

from __future__ import annotations

from typing import Any

from miprun.errors import MiprunError


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


class RemoveBlocksSurgeon:
    """Remove the selected blocks: re-index per-layer state (attention ``layer_idx``), slice per-layer
    config lists (``layer_types``), update ``num_hidden_layers``; embeddings stay tied if they were."""

    name = "remove-blocks"

    def apply(self, model: Any, adapter: Any, blocks: list[int]) -> dict[str, Any]:
        """Remove ``blocks`` (0-based original indices) in place; return parameter counts before/after."""
        total = adapter.num_blocks
        invalid = sorted(b for b in blocks if not 0 <= b < total)
        if invalid or len(set(blocks)) != len(blocks):
            raise MiprunError(f"cannot remove blocks {blocks}: need distinct indices in 0..{total - 1}")
        if len(blocks) >= total:
            raise MiprunError(f"cannot remove all {total} blocks; choose fewer")
        before = count_parameters(model)
        keep = [i for i in range(total) if i not in set(blocks)]
        adapter.keep_blocks(keep)
        return {
            "removed_blocks": sorted(blocks),
            "kept_blocks": keep,
            "num_blocks_before": total,
            "num_blocks_after": len(keep),
            "parameters_before": before,
            "parameters_after": count_parameters(model),
        }
