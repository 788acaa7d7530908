"""Activation-aware width baselines: Wanda-sp (‖a_j‖·Σ|W_down[:, j]|) and FLAP (Var(a_j)·‖W_down[:, j]‖²)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import miprun
from miprun.contracts import FFNActivations, NeuronScores, RunContext
from miprun.errors import MiprunError
from miprun.selectors.neuron_flap import NeuronFlapSelector
from miprun.selectors.neuron_magnitude import NeuronMagnitudeSelector
from miprun.selectors.neuron_mi_energy import NeuronMIEnergySelector, greedy_conditional_removal
from miprun.selectors.neuron_wanda import NeuronWandaSelector


def _setup():
    """One tiny Llama layer (64 neurons) with equal down columns except neuron 3's, which is tiny,
    and activations where neuron 0 is large and constant, neuron 1 large and fluctuating, neuron 2
    small and fluctuating, neuron 3 large and fluctuating (a massive activation on small weights)."""
    loaded = build_tiny("llama", layers=1, seed=41)
    _, down = loaded.adapter.ffn_modules(0)
    with torch.no_grad():
        down.weight.fill_(0.1)
        down.weight[:, 3] = 0.001
    g = torch.Generator().manual_seed(42)
    acts = 0.01 * torch.randn(500, 64, generator=g)
    acts[:, 0] = 50.0
    acts[:, 1] = 5.0 * torch.randn(500, generator=g)
    acts[:, 2] = 0.5 * torch.randn(500, generator=g)
    acts[:, 3] = 2000.0 * torch.randn(500, generator=g)
    inputs = FFNActivations([0], [acts])
    context = RunContext(loaded.model, loaded.adapter, torch.zeros(1, 2, dtype=torch.long), inputs=inputs)
    return NeuronScores([0], [64]), context


def test_wanda_keeps_large_activations_flap_drops_constant_ones_magnitude_sees_neither():
    scores, context = _setup()
    removed = {name: set(range(64)) - set(selector.select(scores, 61, context=context).keep[0])
               for name, selector in (("wanda", NeuronWandaSelector()), ("flap", NeuronFlapSelector()),
                                      ("magnitude", NeuronMagnitudeSelector()))}
    kept = {name: set(range(64)) - gone for name, gone in removed.items()}
    assert kept["wanda"] == {0, 1, 3}          # ‖a‖·Σ|W|: the constant large neuron counts, the tiny-weight one too
    assert kept["flap"] == {1, 2, 3}           # a constant neuron is a bias: FLAP removes it
    assert 3 not in kept["magnitude"]          # weights alone miss the massive activation


def test_activation_baselines_run_end_to_end_and_need_the_collected_activations(text_file):
    for selector in ("wanda", "flap"):
        result = miprun.prune(build_tiny("llama", layers=2, seed=43), granularity="neuron", ratio=0.25,
                              selector=selector, calib=str(text_file), num_samples=4, seq_len=16, heal_samples=4,
                              save=False)
        assert result.report["strategies"]["selector"]["name"] == f"neuron-{selector}"
        assert result.report["strategies"]["collector"]["name"] == "ffn-activations"
        assert all(len(kept) == 48 for kept in result.selection.keep.values())
    with pytest.raises(MiprunError, match="neuron-wanda reads the FFN activations"):
        NeuronWandaSelector().select(NeuronScores([0], [64]), 4, context=None)


def test_mi_energy_removes_a_loud_copy_that_flap_keeps():
    """Neurons 0 and 1 are the same loud signal, the others independent and quieter. FLAP ranks by
    variance and removes a quiet neuron; MI × energy sees that either copy carries the other."""
    loaded = build_tiny("llama", layers=1, seed=44)
    g = torch.Generator().manual_seed(45)
    acts = torch.randn(400, 64, generator=g)
    acts[:, 0] = 3.0 * torch.randn(400, generator=g)
    acts[:, 1] = acts[:, 0]
    context = RunContext(loaded.model, loaded.adapter, torch.zeros(1, 2, dtype=torch.long),
                         inputs=FFNActivations([0], [acts]))
    _, down = loaded.adapter.ffn_modules(0)
    with torch.no_grad():
        down.weight.fill_(0.1)
    scores = NeuronScores([0], [64])
    flap = set(range(64)) - set(NeuronFlapSelector().select(scores, 2, context=context).keep[0])
    energy = set(range(64)) - set(NeuronMIEnergySelector().select(scores, 2, context=context).keep[0])
    assert not flap & {0, 1}
    assert len(energy & {0, 1}) == 1  # one copy goes, the other carries it


def test_greedy_costs_are_the_refit_residuals_of_an_independent_least_squares():
    """Each step's cost is what the best refit of the neurons still kept cannot reproduce: the first
    removal's cost is ‖w_j‖² times the Schur complement Σ_jj − Σ_jK Σ_KK⁻¹ Σ_Kj, and two steps add up
    to tr(W_R S W_Rᵀ) with S the Schur complement of the removed pair (compensation included)."""
    g = torch.Generator().manual_seed(46)
    a = torch.randn(300, 7, generator=g, dtype=torch.float64) @ torch.randn(7, 7, generator=g, dtype=torch.float64)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    ridge = 1e-3
    removed, costs = greedy_conditional_removal(a, w, 2, ridge)
    sigma = a.T @ a / 300
    sigma += ridge * float(sigma.diagonal().mean()) * torch.eye(7, dtype=torch.float64)

    def schur(r: list[int]) -> torch.Tensor:
        k = [i for i in range(7) if i not in r]
        return sigma[r][:, r] - sigma[r][:, k] @ torch.linalg.solve(sigma[k][:, k], sigma[k][:, r])

    first = [float(w[:, j].pow(2).sum() * schur([j])[0, 0]) for j in range(7)]
    assert removed[0] == min(range(7), key=first.__getitem__)
    assert costs[0] == pytest.approx(min(first), rel=1e-9)
    pair = removed[:2]
    joint = float(torch.trace(w[:, pair] @ schur(pair) @ w[:, pair].T))
    assert sum(costs) == pytest.approx(joint, rel=1e-9)


def test_mi_energy_runs_end_to_end(text_file):
    result = miprun.prune(build_tiny("llama", layers=2, seed=47), granularity="neuron", ratio=0.25,
                          selector="mi-energy", calib=str(text_file), num_samples=4, seq_len=16, heal_samples=4,
                          save=False)
    assert result.report["strategies"]["selector"]["name"] == "neuron-mi-energy"
    assert all(len(kept) == 48 for kept in result.selection.keep.values())
    with pytest.raises(MiprunError, match="ridge"):
        NeuronMIEnergySelector(ridge=0)


def test_a_biased_projection_forgives_a_neuron_its_mean():
    """With a bias to refit, a neuron that is a constant plus a little noise costs only its noise;
    without one, its constant must be carried by the other neurons."""
    g = torch.Generator().manual_seed(48)
    acts = torch.randn(400, 6, generator=g, dtype=torch.float64)
    acts[:, 0] = 10.0 + 0.01 * torch.randn(400, generator=g, dtype=torch.float64)
    columns = torch.ones(3, 6, dtype=torch.float64)
    assert greedy_conditional_removal(acts, columns, 1, 1e-3, centred=True)[0] == [0]
    assert greedy_conditional_removal(acts, columns, 1, 1e-3, centred=False)[0] != [0]
