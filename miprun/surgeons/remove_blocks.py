"""Surgeon ``remove-blocks``: delete whole blocks and keep the model loadable by stock transformers."""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection
from miprun.models.parameters import count_parameters


class RemoveBlocksSurgeon:
    """Remove the selected blocks: re-index per-layer state (attention ``layer_idx``), slice per-layer
    config lists (``layer_types``), update ``num_hidden_layers``; embeddings stay tied if they were."""

    name = "remove-blocks"

    def apply(self, model: Any, adapter: Any, selection: Selection) -> dict[str, Any]:
        """Remove the selected blocks (0-based original indices) in place; return parameter counts
        before/after."""
        total = adapter.num_blocks
        blocks = selection.checked(total)
        before = count_parameters(model)
        keep = [i for i in range(total) if i not in set(blocks)]
        adapter.keep_blocks(keep)
        return {
            "removed_blocks": blocks,
            "kept_blocks": keep,
            "num_blocks_before": total,
            "num_blocks_after": len(keep),
            "parameters_before": before,
            "parameters_after": count_parameters(model),
        }
