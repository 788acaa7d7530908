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

from miprun.errors import MiprunError
from miprun.surgeons.remove_blocks import count_parameters


def merge_plan(num_blocks: int, removed: list[int]) -> dict[int, list[int]]:
    """Base block → the removed blocks folded into it (nearest kept block before, else after)."""
    gone = set(removed)
    kept = [b for b in range(num_blocks) if b not in gone]
    if not kept:
        raise MiprunError(f"cannot collapse all {num_blocks} blocks; keep at least one")
    plan: dict[int, list[int]] = {}
    for b in sorted(gone):
        before = [k for k in kept if k < b]
        base = before[-1] if before else next(k for k in kept if k > b)
        plan.setdefault(base, []).append(b)
    return plan


def mergeable_parameters(block: Any) -> dict[str, Any]:
    """The parameters of ``block`` that a merge combines: all but those of normalisation modules."""
    norm_params = {
        f"{name}.{pname}" if name else pname
        for name, module in block.named_modules()
        if "norm" in type(module).__name__.lower()
        for pname, _ in module.named_parameters(recurse=False)
    }
    return {name: p for name, p in block.named_parameters() if name not in norm_params}


def merged_parameters(adapter: Any, base: int, absorbed: list[int]) -> dict[str, torch.Tensor]:
    """θ_base + Σ_k (θ_k − θ_base) for every mergeable tensor of block ``base`` (new tensors; the
    model is not changed). Sums are formed in float32 (or the tensor's wider dtype)."""
    base_params = mergeable_parameters(adapter.blocks[base])
    others = [mergeable_parameters(adapter.blocks[k]) for k in absorbed]
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in base_params.items():
            work = torch.promote_types(p.dtype, torch.float32)
            theta = p.detach().to(work)
            total = theta.clone()
            for index, params in zip(absorbed, others):
                if name not in params or params[name].shape != p.shape:
                    raise MiprunError(f"cannot merge block {index} into block {base}: parameter '{name}' differs")
                total += params[name].detach().to(p.device, work) - theta
            merged[name] = total.to(p.dtype)
    return merged


def collapse_overrides(adapter: Any, removed: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """Merged parameters of every base block for removing ``removed`` (see :func:`merge_plan`)."""
    return {base: merged_parameters(adapter, base, absorbed)
            for base, absorbed in merge_plan(adapter.num_blocks, removed).items()}


class LayerCollapseSurgeon:
    """Fold every removed block into the nearest kept block before it, then delete it."""

    name = "laco"

    def apply(self, model: Any, adapter: Any, blocks: list[int]) -> dict[str, Any]:
        """Merge and remove ``blocks`` (0-based original indices) in place; return the merges and
        parameter counts before/after."""
        total = adapter.num_blocks
        invalid = sorted(b for b in blocks if not 0 <= b < total)
        if invalid or len(set(blocks)) != len(blocks):
            raise MiprunError(f"cannot collapse blocks {blocks}: need distinct indices in 0..{total - 1}")
        if len(blocks) >= total:
            raise MiprunError(f"cannot collapse all {total} blocks; choose fewer")
        before = count_parameters(model)
        plan = merge_plan(total, list(blocks))
        overrides = collapse_overrides(adapter, list(blocks))  # all from original parameters
        with torch.no_grad():
            for base, tensors in overrides.items():
                named = dict(adapter.blocks[base].named_parameters())
                for name, value in tensors.items():
                    named[name].copy_(value)
        keep = [i for i in range(total) if i not in set(blocks)]
        adapter.keep_blocks(keep)
        return {
            "removed_blocks": sorted(blocks),
            "kept_blocks": keep,
            "merges": {str(base): absorbed for base, absorbed in sorted(plan.items())},
            "num_blocks_before": total,
            "num_blocks_after": len(keep),
            "parameters_before": before,
            "parameters_after": count_parameters(model),
        }
