"""LaCo's layer merge (Yang et al., 2024), shared by the ``laco`` selector (to try a collapse through
:func:`miprun.probing.overriding`) and the ``laco`` surgeon (to make it).

With base layer l and the layers folded into it, the Reserving-Differences-while-Seeking-Common
merge (the paper's Equation 1) sets θ*_l = θ_l + Σ_k (θ_k − θ_l). Every removed block is folded
into the nearest *kept* block before it (the first kept block after it when there is none before),
with differences taken against the base's **original** parameters, so the merge is a function of
the removed set alone. Normalisation parameters are not merged.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.errors import MiprunError


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
