"""Selector ``neuron-wanda`` (Wanda-sp style, an activation-aware width baseline): a neuron's
importance is the weight magnitude it feeds forward times how large its activation is,
``S_j = ‖a_j‖₂ · Σ_i |W_down[i, j]|`` (Sun et al.'s |W|·‖x‖ for a structured group: the down
projection's column j and its input j), from the activations the run collects. The neurons of
lowest ``S_j`` go. Requested as ``--selector wanda`` at neuron granularity.
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import NeuronScores, NeuronSelection
from miprun.selectors.neuron_ranking import activations, down_columns, keep_highest


class NeuronWandaSelector:
    """Keep the neurons with the largest ‖activation‖ × Σ|down weights|."""

    name = "neuron-wanda"

    def select(self, scores: NeuronScores, n: int, *, context: Any = None) -> NeuronSelection:
        """Remove the ``n`` neurons of lowest Wanda-sp score from every layer."""
        inputs = activations(context, "neuron-wanda")

        def score(position: int, layer: int):
            norms = inputs.acts[position].float().norm(dim=0)
            return norms * down_columns(context.adapter, layer).abs().sum(dim=0)

        return keep_highest(scores, n, score, criterion="Wanda-sp: ‖a_j‖₂ · Σ_i |W_down[i, j]|")
