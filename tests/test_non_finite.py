"""Non-finite weights and hidden states: found where they first appear, named, never pruned silently."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from typer.testing import CliRunner

import miprun
from miprun.cli.main import app
from miprun.errors import MiprunError
from miprun.models.finite import check_weights, finite_activations, finite_sum


def test_a_checkpoint_with_nan_weights_is_refused_on_the_command_line(tmp_path, text_file):
    loaded = build_tiny("llama", layers=4)
    with torch.no_grad():
        loaded.adapter.blocks[1].self_attn.q_proj.weight[0, 0] = float("nan")
    loaded.model.save_pretrained(tmp_path / "damaged")
    loaded.tokenizer.save_pretrained(tmp_path / "damaged")
    for method in ("shortgpt", "mi-prun"):
        result = CliRunner().invoke(app, ["run", "--model", str(tmp_path / "damaged"), "--calib", str(text_file),
                                          "--seq-len", "16", "--num-samples", "2", "--prune", "1", "--method", method,
                                          "--output", str(tmp_path / "out")])
        assert result.exit_code == 2
        assert "block 1 has non-finite weights (NaN or inf) in self_attn.q_proj.weight" in result.output
        assert not (tmp_path / "out").exists()


def test_nan_weights_are_named_by_block_and_never_pruned_silently(text_file, tmp_path):
    loaded = build_tiny("llama", layers=4)
    with torch.no_grad():
        loaded.adapter.blocks[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(MiprunError, match=r"block 1 has non-finite weights \(NaN or inf\) in mlp.up_proj.weight"):
        check_weights(loaded.adapter)
    out = tmp_path / "out"
    with pytest.raises(MiprunError, match="block 1 has non-finite weights"):
        miprun.prune(loaded, n=1, calib=str(text_file), num_samples=2, seq_len=16, method="shortgpt", output=out)
    assert not out.exists()


def test_non_finite_hidden_states_name_the_first_block_that_produces_them():
    loaded = build_tiny("llama", layers=4)
    with torch.no_grad():  # finite weights that overflow: block 2's FFN writes inf
        loaded.adapter.blocks[2].mlp.down_proj.weight.fill_(3e38)
        loaded.adapter.blocks[2].mlp.up_proj.weight.fill_(1e3)
    check_weights(loaded.adapter)  # the weights themselves are finite
    with finite_activations(loaded.adapter), pytest.raises(MiprunError, match="block 2 produced non-finite hidden states"):
        loaded.model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    half = build_tiny("llama", layers=2).model.to(torch.bfloat16)
    from miprun.models.adapters import adapter_for

    with torch.no_grad():
        half.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    with finite_activations(adapter_for(half)), pytest.raises(MiprunError, match="retry with --dtype float32"):
        half(input_ids=torch.tensor([[1, 2, 3]]))


def test_the_finite_check_sees_every_bad_entry_and_is_not_fooled_by_an_overflowing_sum():
    """A NaN or ±inf anywhere is found; finite half-precision entries whose float32 sum overflows
    (or float32 entries whose sum does) are still finite."""
    values = torch.randn(3, 7, 5)
    assert finite_sum(values) and finite_sum(torch.arange(4))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            damaged = values.to(dtype)
            damaged[2, 6, 4] = bad
            assert not finite_sum(damaged)
    assert finite_sum(torch.full((4, 4), 3e38))  # float32 sum overflows, every entry finite
    assert finite_sum(torch.full((100_000,), 60_000.0, dtype=torch.float16))
