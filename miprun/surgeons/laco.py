"""Surgeon ``laco``: layer collapse (LaCo, Yang et al., 2024, "LaCo: Large Language Model Pruning
via Layer Collapse").

Instead of deleting a block, LaCo folds it into an earlier one. With base layer l and the layers
l+1 … l+m that follow it, the paper's Reserving-Differences-while-Seeking-Common merge (its
Equation 1) sets

    θ*_l = θ_l + Σ_{k=1}^{m} (θ_{l+k} − θ_l)

and deletes layers l+1 … l+m. Here every removed block is folded into the nearest *kept* block
before it (the first kept block after it when there is none before), and the differences are
always taken against the **original** parameters of the base: a base that absorbs a block which had
itself absorbed others gets θ_base + Σ over all of them of (θ_k − θ_base). The merge is therefore a
function of the removed set alone, so the surgeon can follow any selector, and the ``laco``
selector scores candidates with exactly the model this surgeon builds.

Merged tensors: every parameter of the block except those of normalisation modules (the
projection weights and their biases); the base keeps its own norm scales. See ``docs/baselines.md``
for how this departs from the published code.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import Selection
from miprun.models.layer_collapse import collapse_overrides, merge_plan
from miprun.models.parameters import count_parameters


class LayerCollapseSurgeon:
    """Fold every removed block into the nearest kept block before it, then delete it."""

    name = "laco"

    def apply(self, model: Any, adapter: Any, selection: Selection) -> dict[str, Any]:
        """Merge and remove the selected blocks (0-based original indices) in place; return the
        merges and parameter counts before/after."""
        total = adapter.num_blocks
        blocks = selection.checked(total)
        before = count_parameters(model)
        plan = merge_plan(total, blocks)
        overrides = collapse_overrides(adapter, blocks)  # all from original parameters
        with torch.no_grad():
            for base, tensors in overrides.items():
                named = dict(adapter.blocks[base].named_parameters())
                for name, value in tensors.items():
                    named[name].copy_(value)
        keep = [i for i in range(total) if i not in set(blocks)]
        adapter.keep_blocks(keep)
        return {
            "removed_blocks": blocks,
            "kept_blocks": keep,
            "merges": {str(base): absorbed for base, absorbed in sorted(plan.items())},
            "num_blocks_before": total,
            "num_blocks_after": len(keep),
            "parameters_before": before,
            "parameters_after": count_parameters(model),
        }
