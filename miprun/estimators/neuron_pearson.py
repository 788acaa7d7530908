"""Estimator ``neuron-pearson``: |Pearson correlation| between every pair of FFN neurons.

The ablation of Huang, Song & Pao that replaces mutual information by correlation: the same
selectors (``mds-cluster``, ``mi-threshold``) run on |ρ_ij| ∈ [0, 1] instead of MI, so only linear
dependence counts as redundancy. One correlation matrix per layer (O(n m²)); the diagonal is 1 and a
constant neuron has correlation 0 with every other neuron.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from miprun.estimators.neuron_gaussian import (
    as_activation_matrix,
    normal_score_correlation,
)
from miprun.estimators.neuron_mi import ScalarPairMixin


class NeuronPearsonEstimator(ScalarPairMixin):
    """|ρ| between the raw activations of every pair of neurons (a baseline, not an MI estimate)."""

    name = "neuron-pearson"
    metric = "abs-corr"
    self_information = True  # |ρ_ii| = 1, so normalising changes nothing

    def pairwise(self, acts: Any, *, info: dict[str, Any] | None = None) -> torch.Tensor:
        """Symmetric (m × m) float32 matrix of |Pearson ρ| for the neurons of ``acts`` (tokens × m)."""
        start = time.perf_counter()
        x = as_activation_matrix(acts, "neuron-pearson")
        result = normal_score_correlation(x, copula=False).abs().to(torch.float32)
        if info is not None:
            info.update({"tokens": int(x.shape[0]), "seconds": round(time.perf_counter() - start, 4)})
        return result
