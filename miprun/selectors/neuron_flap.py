"""Selector ``neuron-flap`` (FLAP's fluctuation metric, An et al. 2024, an activation-aware width
baseline): a neuron matters as much as its activation *fluctuates* around its mean, weighted by the
energy of the weights it feeds forward, ``S_j = Var(a_j) · ‖W_down[:, j]‖₂²`` — a neuron that is
nearly constant can be replaced by a bias (FLAP's compensation; miprun's ``neuron-linear`` healer
fits that intercept and more). The neurons of lowest ``S_j`` go. Requested as ``--selector flap``
at neuron granularity; miprun's width default, because with the width healer it gives the best
healed model measured here, or within 1 % of it, at every ratio (docs/neuron-pruning.md).
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import NeuronScores, NeuronSelection
from miprun.selectors.neuron_ranking import (
    activations,
    down_columns,
    keep_highest,
    output_energy,
)


class NeuronFlapSelector:
    """Keep the neurons with the largest activation variance × squared down-column norm."""

    name = "neuron-flap"

    def select(self, scores: NeuronScores, n: int, *, context: Any = None) -> NeuronSelection:
        """Remove the ``n`` neurons of lowest fluctuation score from every layer."""
        inputs = activations(context, "neuron-flap")

        def score(position: int, layer: int):
            return output_energy(inputs.acts[position], down_columns(context.adapter, layer), centred=True)

        return keep_highest(scores, n, score, criterion="FLAP fluctuation: Var(a_j) · ‖W_down[:, j]‖²")
