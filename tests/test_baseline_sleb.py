"""SLEB, and the probing utility it shares with the other model-running criteria."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny

from miprun.contracts import RunContext, SpanScores
from miprun.models.adapters import adapter_for
from miprun.probing import Prober, overriding
from miprun.selectors.sleb import SLEBSelector, sleb_forward_passes

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_without(model, blocks, ids):
    """Brute force: the mean next-token loss of a copy of ``model`` with ``blocks`` deleted."""
    pruned = copy.deepcopy(model)
    adapter = adapter_for(pruned)
    adapter.keep_blocks([i for i in range(adapter.num_blocks) if i not in set(blocks)])
    with torch.no_grad():
        return float(pruned(input_ids=ids, labels=ids).loss)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_skipping_a_block_equals_deleting_it(arch):
    loaded = build_tiny(arch, layers=4)
    ids = torch.randint(4, 40, (3, 12))
    prober = Prober(loaded.model, loaded.adapter, ids, batch_size=2)
    assert prober.loss([1, 2]) == pytest.approx(loss_without(loaded.model, [1, 2], ids), abs=1e-5)
    assert prober.loss() == pytest.approx(loss_without(loaded.model, [], ids), abs=1e-5)
    assert prober.passes == 2
    assert all("forward" not in block.__dict__ for block in loaded.adapter.blocks)  # nothing left patched


def test_overriding_restores_parameters_bit_for_bit():
    loaded = build_tiny("llama", layers=3)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    name, param = next(iter(loaded.adapter.blocks[1].named_parameters()))
    with overriding(loaded.adapter, {1: {name: torch.zeros_like(param)}}):
        assert float(param.detach().abs().sum()) == 0.0
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_sleb_removes_the_block_whose_removal_raises_loss_least_and_rescores():
    loaded = build_tiny("llama", layers=5, seed=2)
    ids = torch.randint(4, 40, (4, 12))
    context = RunContext(loaded.model, loaded.adapter, ids)
    selection = SLEBSelector(batch_size=3).select(SpanScores(5, lambda f, n: 0.0, metric="x", redundant_when_high=False), 2, context=context)
    first_losses = {b: loss_without(loaded.model, [b], ids) for b in range(5)}
    first = min(first_losses, key=first_losses.get)
    second_losses = {b: loss_without(loaded.model, [first, b], ids) for b in range(5) if b != first}
    second = min(second_losses, key=second_losses.get)
    assert selection.info["removal_order"] == [first, second]
    assert selection.blocks == sorted([first, second])
    step1 = {int(k): v for k, v in selection.trace[0]["losses"].items()}
    assert step1 == pytest.approx(first_losses, abs=1e-5)
    step2 = {int(k): v for k, v in selection.trace[1]["losses"].items()}
    assert step2 == pytest.approx(second_losses, abs=1e-5)
    # O(N·T): 5 + 4 candidate passes and one dense pass
    assert sleb_forward_passes(5, 2) == 9
    assert selection.info["forward_passes"] == 10 == context.forward_passes


def test_removing_an_identity_block_leaves_the_calibration_loss_unchanged():
    loaded = build_tiny("llama", layers=4, seed=1)
    block = loaded.adapter.blocks[2]
    with torch.no_grad():  # zero the residual writes: block 2 becomes the identity
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    ids = torch.randint(4, 40, (2, 10))
    selection = SLEBSelector().select(SpanScores(4, lambda f, n: 0.0, metric="x", redundant_when_high=False), 1,
                                      context=RunContext(loaded.model, loaded.adapter, ids))
    losses = {int(k): v for k, v in selection.trace[0]["losses"].items()}
    assert losses[2] == pytest.approx(selection.info["dense_loss"], abs=1e-6)
    assert selection.blocks == [min(losses, key=losses.get)]
