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
