"""Selector ``neuron-magnitude``: remove the FFN neurons with the smallest weights (a baseline).

The importance of neuron j is the L2 norm of every weight attached to it — its rows in the producers
(gate and up — both halves of a fused ``gate_up_proj`` — or ``c_fc`` / ``intermediate.dense``,
with their bias entries) and its column in the down
projection — i.e. the group norm of the structure that slicing removes. Needs no activations and no
forward pass. Requested as ``--selector magnitude`` at neuron granularity.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import NeuronScores, NeuronSelection
from miprun.errors import MiprunError
from miprun.models.adapters import ffn_in_features, neuron_axis
from miprun.selectors.neuron_ranking import keep_highest


def neuron_weight_norms(adapter: Any, layer: int) -> torch.Tensor:
    """L2 norm of all weights (and producer biases) attached to each FFN neuron of ``layer``."""
    producers, down = adapter.ffn_modules(layer)
    width = ffn_in_features(down)
    total = None
    for module, role in [(p, "producer") for p in producers] + [(down, "down")]:
        weight = module.weight.detach().float().cpu()
        axis = neuron_axis(module, role)
        part = weight.pow(2).sum(dim=1 - axis)
        if role == "producer" and getattr(module, "bias", None) is not None:
            part = part + module.bias.detach().float().cpu().pow(2)
        part = part.reshape(-1, width).sum(dim=0)  # a fused gate_up_proj: both chunks of each neuron
        total = part if total is None else total + part
    return total.sqrt()


class NeuronMagnitudeSelector:
    """Keep the neurons with the largest weight norm in every layer."""

    name = "neuron-magnitude"

    def select(self, scores: NeuronScores, n: int, *, context: Any = None) -> NeuronSelection:
        """Remove the ``n`` neurons of smallest weight norm from every layer (ties: higher index first)."""
        if context is None:
            raise MiprunError("neuron-magnitude needs the model; run it through the pipeline")
        return keep_highest(scores, n, lambda position, layer: neuron_weight_norms(context.adapter, layer),
                            criterion="weight L2 norm per neuron")
