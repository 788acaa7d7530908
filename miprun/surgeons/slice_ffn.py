"""Surgeon ``slice-ffn``: remove FFN neurons and keep the checkpoint loadable by stock transformers.

Removing neuron j of a layer deletes row j of every producer (Llama-like ``gate_proj`` and
``up_proj``; BERT ``intermediate.dense``; GPT-2 ``c_fc``, whose ``Conv1D`` weight is stored
transposed, so there it is column j; rows j and I + j of a fused ``gate_up_proj`` I neurons wide,
Phi-3's and GLM's) together with its bias entry, and column j of the down
projection (row j of GPT-2's ``c_proj``). The down projection's bias stays. Every layer keeps the same
number of neurons, so the config keeps one FFN width (``intermediate_size``; GPT-2 ``n_inner``) and
``from_pretrained`` rebuilds the same shapes.

:func:`miprun.models.neuron_masks.masked_neurons` is the in-place equivalent used to *try* a selection without editing weights
(the ``mds-cluster`` selector compares candidate selections by output KL): zeroing neuron j at the
input of the down projection removes exactly its contribution.

Relative FLOPs (pruned / original, as in Huang, Song & Pao) count the multiply-adds of every linear
map per token, 2 · in · out for each ``nn.Linear``/``Conv1D`` including the LM head; the attention
score and value products (which depend on the context length, not on the FFN) are left out, so the
ratio is the one that matters for short contexts. The FFN-only ratio is reported too.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import NeuronSelection
from miprun.errors import MiprunError
from miprun.models.adapters import neuron_axis, neuron_index
from miprun.models.parameters import count_parameters


def linear_flops(model: Any) -> int:
    """Multiply-add FLOPs per token of every ``nn.Linear`` and ``Conv1D`` in ``model`` (2 · in · out)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            total += 2 * module.weight.numel()
    return total


def _ffn_flops(adapter: Any) -> int:
    total = 0
    for index in range(adapter.num_blocks):
        producers, down = adapter.ffn_modules(index)
        total += sum(2 * m.weight.numel() for m in (*producers, down))
    return total


def _slice(module: Any, index: torch.Tensor, axis: int, *, with_bias: bool) -> None:
    weight = module.weight
    new = torch.nn.Parameter(weight.data.index_select(axis, index.to(weight.device)).clone(),
                             requires_grad=weight.requires_grad)
    module.weight = new
    if with_bias and getattr(module, "bias", None) is not None:
        bias = module.bias
        module.bias = torch.nn.Parameter(bias.data.index_select(0, index.to(bias.device)).clone(),
                                         requires_grad=bias.requires_grad)
    width = len(index)
    if hasattr(module, "in_features"):
        if axis == 0:
            module.out_features = width
        else:
            module.in_features = width
    elif hasattr(module, "nf") and axis == 1:
        module.nf = width


class SliceFFNSurgeon:
    """Keep the selected FFN neurons of every layer; update the config's FFN width."""

    name = "slice-ffn"

    def apply(self, model: Any, adapter: Any, selection: NeuronSelection) -> dict[str, Any]:
        """Slice every layer of ``selection.keep`` (block index → kept neuron indices) in place; return
        widths, parameter counts and relative FLOPs. ``selection.merges`` (per layer
        ``(removed j, kept k, β)``) first adds β × column j of the down projection to column k, so
        that a removed neuron whose activation is ≈ β × neuron k's is compensated by neuron k."""
        if not isinstance(selection, NeuronSelection):
            raise MiprunError("surgeon 'slice-ffn' needs kept neurons per layer; use it with a neuron selector")
        keep, merges = selection.keep, selection.merges
        widths_before = {i: adapter.ffn_width(i) for i in range(adapter.num_blocks)}
        for layer, kept in keep.items():
            if not 0 <= layer < adapter.num_blocks:
                raise MiprunError(f"layer {layer} is outside the model's {adapter.num_blocks} blocks")
            width = widths_before[layer]
            if not kept or len(set(kept)) != len(kept) or any(not 0 <= k < width for k in kept):
                raise MiprunError(f"cannot keep neurons {kept[:8]}… of layer {layer}: need distinct indices in 0..{width - 1}")
        after = {i: len(keep[i]) if i in keep else widths_before[i] for i in widths_before}
        if len(set(after.values())) != 1:
            raise MiprunError(
                "slice-ffn keeps the same number of neurons in every layer (a standard config has one "
                f"intermediate size); got {sorted(set(after.values()))}"
            )
        params_before, flops_before, ffn_before = count_parameters(model), linear_flops(model), _ffn_flops(adapter)
        merged = 0
        for layer, pairs in (merges or {}).items():
            _, down = adapter.ffn_modules(layer)
            axis = neuron_axis(down, "down")
            kept = set(keep.get(layer, range(widths_before[layer])))
            with torch.no_grad():
                for removed, target, beta in pairs:
                    if removed in kept or target not in kept:
                        raise MiprunError(f"cannot merge neuron {removed} into {target} in layer {layer}")
                    down.weight.select(axis, target).add_(down.weight.select(axis, removed), alpha=float(beta))
                    merged += 1
        for layer, kept in sorted(keep.items()):
            producers, down = adapter.ffn_modules(layer)
            index = torch.tensor(sorted(kept), dtype=torch.long)
            for module in producers:
                _slice(module, neuron_index(module, "producer", widths_before[layer], index),
                       neuron_axis(module, "producer"), with_bias=True)
            _slice(down, index, neuron_axis(down, "down"), with_bias=False)
            for module in adapter.blocks[layer].modules():
                if getattr(module, "intermediate_size", None) == widths_before[layer]:
                    module.intermediate_size = len(index)
        new_width = next(iter(after.values()))
        adapter.set_ffn_width(new_width)
        flops_after = linear_flops(model)
        return {
            "layers": sorted(keep),
            "width_before": sorted(set(widths_before.values())),
            "width_after": new_width,
            "removed_per_layer": {str(k): widths_before[k] - len(v) for k, v in sorted(keep.items())},
            "merged_neurons": merged,
            "config_field": adapter.spec.ffn_size_field,
            "parameters_before": params_before,
            "parameters_after": count_parameters(model),
            "linear_flops_per_token_before": flops_before,
            "linear_flops_per_token_after": flops_after,
            "relative_flops": round(flops_after / flops_before, 6) if flops_before else None,
            "relative_ffn_flops": round(_ffn_flops(adapter) / ffn_before, 6) if ffn_before else None,
        }
