"""bfloat16 multiplications for healing statistics (miprun.models.matmul_precision) and the block
healer's use of them."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from miprun.healing import LinearHealer
from miprun.models.matmul_precision import (
    RIDGE_FLOOR,
    bfloat16_products,
    exact_hooks,
    reducible,
    statistics_pass,
    statistics_products,
)


def test_only_float32_products_on_a_cpu_with_bfloat16_units_are_reduced_and_the_setting_comes_back():
    native = statistics_products("cpu", torch.float32) == "bfloat16"
    assert statistics_products("cpu", torch.float64) == "model precision"
    assert statistics_products("cpu", torch.bfloat16) == "model precision"
    assert statistics_products("meta", torch.float32) == "model precision"
    before = torch.backends.mkldnn.matmul.fp32_precision
    with pytest.raises(RuntimeError, match="inside"):
        with bfloat16_products("cpu", torch.float32) as used:
            assert used == ("bfloat16" if native else "model precision")
            assert torch.backends.mkldnn.matmul.fp32_precision == ("bf16" if native else before)
            raise RuntimeError("inside")
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    with bfloat16_products("cpu", torch.float32, enabled=False) as used:
        assert used == "model precision" and torch.backends.mkldnn.matmul.fp32_precision == before


def test_a_bfloat16_statistics_pass_runs_linear_layers_in_bfloat16_and_its_hooks_in_float32():
    """``statistics_pass("bfloat16")`` runs a float32 layer's product in bfloat16 (autocast) and a
    hook inside ``exact_hooks`` gets float32 products again; any other value changes nothing, and
    autocast is off after either, also after an error."""
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    seen = []

    def hook(module, args, out):
        with exact_hooks():
            seen.append((out.dtype, (args[0].float() @ args[0].float().T).dtype))

    handle = layer.register_forward_hook(hook)
    with pytest.raises(RuntimeError, match="inside"):
        with statistics_pass("bfloat16"):
            with torch.no_grad():
                layer(x)
            raise RuntimeError("inside")
    assert not torch.is_autocast_enabled("cpu")
    with statistics_pass("model precision"), torch.no_grad():
        assert not torch.is_autocast_enabled("cpu")
        plain = layer(x)
    handle.remove()
    assert seen == [(torch.bfloat16, torch.float32), (torch.float32, torch.float32)]
    assert plain.dtype == torch.float32


def test_the_block_healer_with_bfloat16_products_folds_what_the_float32_fit_folds_up_to_their_rounding():
    """The default block healer (``products="auto"``) on a two-block cut: the folded down projection
    and the refitted attention output projections after it are within 1 % of the float32 fit's, the
    summary says what the products used; an exact fit (no ridge) stays float64 and ReplaceMe's map,
    whose ridge is below :data:`RIDGE_FLOOR`, float32."""
    ids = torch.randint(4, 80, (12, 16), generator=torch.Generator().manual_seed(41))
    folded, summaries = [], []
    for products in ("float32", "auto"):
        loaded = build_tiny("llama", layers=6, seed=42)
        summaries.append(LinearHealer(products=products).heal(loaded.model, loaded.adapter, [2, 3], ids))
        layers = loaded.model.model.layers
        folded.append(torch.cat([layers[1].mlp.down_proj.weight.detach().reshape(-1),
                                 layers[4].self_attn.o_proj.weight.detach().reshape(-1)]).double())
    native = statistics_products("cpu", torch.float32) == "bfloat16"
    assert summaries[0]["products"] == "float32"
    assert summaries[1]["products"] == ("bfloat16 inputs, float32 sums" if native else "float32")
    change = float((folded[1] - folded[0]).norm() / folded[0].norm())
    assert change < 1e-2 and (change > 0 if native else change == 0)
    loaded = build_tiny("llama", layers=6, seed=42)
    assert LinearHealer(ridge=0.0).heal(loaded.model, loaded.adapter, [2, 3], ids)["products"] == "float64"
    loaded = build_tiny("llama", layers=6, seed=42)
    assert LinearHealer(fit="map").heal(loaded.model, loaded.adapter, [2, 3], ids)["products"] == "float32"
    assert reducible(RIDGE_FLOOR, 0.3) and not reducible(0.3, RIDGE_FLOOR / 2) and reducible()
