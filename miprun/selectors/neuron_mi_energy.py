"""Selector ``neuron-mi-energy`` (MI redundancy × importance; ``--selector mi-energy`` at neuron
granularity): remove, one at a time, the neuron whose output is best carried by the neurons that stay.

A neuron's importance is the energy it sends forward, ‖W_down[:, j]‖² · E[a_j²]; what removing it
costs once the kept neurons are refitted (the ``neuron-linear`` healer) is only the part of a_j the
others cannot reproduce. Under a Gaussian model of the layer's activations that part is

    E[a_j² | a_kept] = E[a_j²] · exp(−2 I(a_j; a_kept)),

the MI of the neuron with the rest of its layer, so the score is importance discounted by redundancy:

    S_j = ‖W_down[:, j]‖² · E[a_j²] · exp(−2 I(a_j; a_kept)) = ‖W_down[:, j]‖² / [Σ⁻¹]_jj

with Σ the ridge-regularised second-moment matrix of the kept neurons (their covariance where the
down projection has a bias, which the healer refits and which absorbs a neuron's mean — GPT-2, OPT). The neuron of
lowest S_j goes; the others' down columns take over what they can of it (W ← W − w_j Σ⁻¹[j, :] /
Σ⁻¹[j, j], the least-squares compensation), Σ⁻¹ is downdated (a rank-one Schur step) and the next is
scored — the greedy form of Optimal Brain Surgeon (Hassibi & Stork 1993) for whole neurons, written
here from its formulas. Pure importance (FLAP, Wanda-sp) misses redundancy; pure redundancy (the
paper's ``mds-cluster``) misses importance. ``mds-cluster`` stays the paper's literal method.

Cost per layer: one m × m inverse and n rank-one steps of O(m · (m + hidden)), each an in-place
BLAS rank-one update of Σ⁻¹ and of the down columns, with the columns' squared norms carried along
(‖w_k − r_k w_j‖² = ‖w_k‖² − 2 r_k ⟨w_j, w_k⟩ + r_k² ‖w_j‖²) instead of recomputed.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import NeuronScores, NeuronSelection
from miprun.errors import MiprunError
from miprun.selectors.neuron_ranking import activations, down_columns


def greedy_conditional_removal(acts: torch.Tensor, columns: torch.Tensor, n: int, ridge: float, *,
                               centred: bool = False) -> tuple[list[int], list[float]]:
    """The ``n`` neurons to remove from one layer, in removal order, with the score of each when it
    went. ``acts``: (tokens × m) activations; ``columns``: (hidden × m) down-projection columns;
    ``centred``: the projection has a bias, which absorbs each neuron's mean (covariance instead of
    second moments)."""
    a = acts.to(torch.float64)
    if centred:
        a = a - a.mean(dim=0, keepdim=True)
    m = a.shape[1]
    second = a.T @ a / max(a.shape[0], 1)
    scale = float(second.diagonal().mean()) if m else 0.0
    second += (ridge * scale if scale > 0 else 1.0) * torch.eye(m, dtype=torch.float64)
    precision = torch.linalg.inv(second)
    w = columns.to(torch.float64).clone()
    alive = torch.ones(m, dtype=torch.bool)
    removed: list[int] = []
    costs: list[float] = []
    energy = w.pow(2).sum(dim=0)  # ‖w_k‖², kept current through each rank-one step
    for _ in range(n):
        score = torch.where(alive, energy / precision.diagonal(), torch.full_like(energy, float("inf")))
        j = int(score.argmin())
        removed.append(j)
        costs.append(float(score[j]))
        row = precision[j] / precision[j, j]
        column = w[:, j].clone()
        # ‖w_k − r_k w_j‖² = ‖w_k‖² − 2 r_k ⟨w_j, w_k⟩ + r_k² ‖w_j‖²
        energy += row * (row * energy[j] - 2.0 * (column @ w))
        w.addr_(column, row, alpha=-1.0)  # compensation in place (BLAS rank-one); column j becomes 0
        precision.addr_(precision[:, j].clone(), row, alpha=-1.0)
        alive[j] = False
        precision[j, :] = 0.0
        precision[:, j] = 0.0
        precision[j, j] = 1.0  # keeps the dead index finite; it is never picked again
    return removed, costs


class NeuronMIEnergySelector:
    """Greedy removal by output energy discounted by Gaussian MI with the kept neurons (module
    docstring).

    :param ridge: ridge on the second-moment matrix, relative to its mean diagonal (the collected
        tokens may be fewer than the neurons).
    """

    name = "neuron-mi-energy"

    def __init__(self, *, ridge: float = 0.01) -> None:
        if not float(ridge) > 0:
            raise MiprunError(f"neuron-mi-energy option ridge={ridge!r} must be > 0")
        self.ridge = float(ridge)

    def select(self, scores: NeuronScores, n: int, *, context: Any = None) -> NeuronSelection:
        """Remove ``n`` neurons from every layer, greedily (module docstring)."""
        inputs = activations(context, "neuron-mi-energy")
        keep, trace = {}, []
        for position, (layer, width) in enumerate(zip(scores.layers, scores.widths)):
            _, down = context.adapter.ffn_modules(layer)
            removed, costs = greedy_conditional_removal(inputs.acts[position], down_columns(context.adapter, layer),
                                                        n, self.ridge, centred=getattr(down, "bias", None) is not None)
            gone = set(removed)
            keep[layer] = [j for j in range(width) if j not in gone]
            trace.append({"layer": layer, "first_cost": costs[0] if costs else None,
                          "last_cost": costs[-1] if costs else None, "tokens": int(inputs.acts[position].shape[0])})
        return NeuronSelection(keep=keep, trace=trace, info={
            "criterion": "‖W_down[:, j]‖² · E[a_j²] · exp(−2 I(a_j; a_kept)), greedy with least-squares compensation",
            "ridge": self.ridge})
