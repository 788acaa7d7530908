"""Width healing (``neuron-linear``): the down projection of every FFN refitted on its kept neurons."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_healed_exactly, build_tiny
from transformers import AutoModelForCausalLM

import miprun
from miprun.contracts import NeuronSelection
from miprun.errors import MiprunError
from miprun.healers.neuron_refit import NeuronRefitHealer
from miprun.healing_fit import RunningProducts, gram_matrix
from miprun.models.adapters import ffn_in_features, neuron_axis, neuron_index
from miprun.surgeons.slice_ffn import SliceFFNSurgeon

IDS = torch.tensor([[1, 5, 9, 12, 7, 30, 4, 8, 22, 17]])
# every family whose FFN is sliced neuron by neuron: gated, Conv1D, fc1/fc2, parallel, post-norm, ALiBi, ungated
WIDTH_ARCHITECTURES = ["llama", "gpt2", "opt", "gpt_neox", "gemma2", "gemma", "olmo2", "smollm3", "stablelm",
                       "starcoder2", "phi", "cohere", "falcon", "gptj", "arcee", "granite", "phi3", "glm4", "qwen3_5_text",
                       "hyperclovax", "nemotron", "gpt_neo", "gpt_bigcode", "codegen", "lfm2", "minicpm3"]


def _duplicate(loaded, layer: int, source: int, copy: int) -> None:
    """Make neuron ``copy`` of ``layer`` compute exactly what neuron ``source`` computes."""
    producers, down = loaded.adapter.ffn_modules(layer)
    width = ffn_in_features(down)
    with torch.no_grad():
        for module in producers:  # a fused gate_up_proj: the neuron's row in each chunk
            axis = neuron_axis(module, "producer")
            into, source_rows = (neuron_index(module, "producer", width, torch.tensor([n])) for n in (copy, source))
            module.weight.index_copy_(axis, into, module.weight.index_select(axis, source_rows))
            if getattr(module, "bias", None) is not None:
                module.bias[into] = module.bias[source_rows]


@pytest.mark.parametrize("architecture", WIDTH_ARCHITECTURES)
def test_removed_neurons_that_copy_kept_ones_are_healed_exactly(architecture, tmp_path):
    """Removed neurons that duplicate kept ones: the refit (no ridge) gives back the dense logits
    to 1e-5, at run time and folded, and the checkpoint reloads and generates."""
    loaded = build_tiny(architecture, layers=3, seed=31)
    width = loaded.adapter.ffn_width(0)
    removed = {layer: [width - 1 - i for i in range(4)] for layer in range(3)}
    for layer, gone in removed.items():
        for i, j in enumerate(gone):
            _duplicate(loaded, layer, source=i, copy=j)
    keep = {layer: [k for k in range(width) if k not in gone] for layer, gone in removed.items()}
    selection = NeuronSelection(keep)
    ids = torch.randint(4, 80, (16, 12), generator=torch.Generator().manual_seed(32))
    with torch.no_grad():
        dense = loaded.model(IDS).logits
    healer = NeuronRefitHealer(ridge=0.0)
    with healer.applied(loaded.model, loaded.adapter, selection, ids) as applied, torch.no_grad():
        at_run_time = loaded.model(IDS).logits
    summary = healer.heal(loaded.model, loaded.adapter, selection, ids)
    SliceFFNSurgeon().apply(loaded.model, loaded.adapter, selection)
    assert all(row["relative_residual_after"] < 1e-5 < row["relative_residual_before"] for row in summary["layers"])
    assert [row["layer"] for row in applied["layers"]] == [0, 1, 2]
    assert_healed_exactly(loaded.model, dense, at_run_time, IDS, tmp_path)


@pytest.mark.parametrize("sink", ["average", "skip"])
def test_the_refit_is_the_ridge_regression_of_the_dense_output_on_the_kept_neurons(sink):
    """Computed by hand for one layer of GPT-2 (bias: the intercept column) at ridge 0.1: every
    token but each sequence's first, and with ``sink="average"`` the first ones as weighted rows
    (inputs, the intercept's one and the output scaled so that the output has the batch's mean
    energy per other token)."""
    loaded = build_tiny("gpt2", layers=2, seed=33)
    width = loaded.adapter.ffn_width(0)
    keep = {0: list(range(0, width, 2)), 1: list(range(width))}
    ids = torch.randint(4, 80, (8, 12), generator=torch.Generator().manual_seed(34))
    _, down = loaded.adapter.ffn_modules(0)
    captured = {}
    hook = down.register_forward_hook(lambda m, a, out: captured.setdefault("rows", []).append((a[0], out)))
    with torch.no_grad():
        for first in range(0, 8, 4):  # the healer's batches of 4 sequences (batch_size=4 below)
            loaded.model(ids[first : first + 4])
    hook.remove()
    inputs, outputs = [], []
    for x, out in captured["rows"]:
        x = torch.cat([x.double()[..., keep[0]], torch.ones(*x.shape[:2], 1, dtype=torch.float64)], -1)
        out = out.double()
        inputs.append(x[:, 1:].reshape(-1, x.shape[-1]))
        outputs.append(out[:, 1:].reshape(-1, out.shape[-1]))
        if sink == "average":
            weight = (outputs[-1].pow(2).sum(1).mean() / out[:, 0].pow(2).sum(1)).sqrt()[:, None]
            inputs.append(x[:, 0] * weight)
            outputs.append(out[:, 0] * weight)
    a, y = torch.cat(inputs), torch.cat(outputs)
    prior = torch.cat([down.weight.detach().double()[keep[0]], down.bias.detach().double()[None]])
    gram = a.T @ a
    ridge = 0.1 * float(gram.diagonal().mean())
    expected = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), a.T @ y + ridge * prior)
    NeuronRefitHealer(ridge=0.1, sink=sink, products="float32", batch_size=4).heal(loaded.model, loaded.adapter,
                                                                                   NeuronSelection(keep), ids)
    got = torch.cat([down.weight.detach().double()[keep[0]], down.bias.detach().double()[None]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_bfloat16_products_move_the_refit_by_their_rounding_only():
    """``products="auto"`` (the default): where the CPU multiplies bfloat16 natively the healing
    pass and the products take bfloat16 inputs, and the refit stays within 1 % of the float32 one
    (the inputs' 8 significant bits, bounded by the ridge); elsewhere it is the float32 refit. The
    summary says which, and the setting is restored afterwards."""
    from miprun.models.matmul_precision import statistics_products

    results, summaries = [], []
    for products in ("float32", "auto"):
        loaded = build_tiny("llama", layers=2, seed=33)
        width = loaded.adapter.ffn_width(0)
        keep = {0: list(range(0, width, 2)), 1: list(range(1, width, 3))}
        ids = torch.randint(4, 80, (8, 12), generator=torch.Generator().manual_seed(34))
        before = torch.backends.mkldnn.matmul.fp32_precision
        summaries.append(NeuronRefitHealer(products=products).heal(loaded.model, loaded.adapter, NeuronSelection(keep), ids))
        assert torch.backends.mkldnn.matmul.fp32_precision == before
        results.append(torch.cat([loaded.adapter.ffn_modules(layer)[1].weight.detach().double()[:, keep[layer]].reshape(-1)
                                  for layer in (0, 1)]))
    exact, auto = results
    bfloat16 = statistics_products("cpu", torch.float32) == "bfloat16"
    assert summaries[0]["products"] == "float32"
    assert summaries[1]["products"] == ("bfloat16 inputs, float32 sums" if bfloat16 else "float32")
    change = float((auto - exact).norm() / exact.norm())
    assert change < 1e-2
    if not bfloat16:
        assert change == 0.0


@pytest.mark.parametrize("width", [10, 129, 300])
def test_the_block_triangular_gram_equals_the_full_product(width):
    """Narrow widths take the one product, wider ones its upper block triangle mirrored: the same
    matrix, symmetric."""
    rows = torch.randn(257, width, generator=torch.Generator().manual_seed(width), dtype=torch.float64)
    got = gram_matrix(rows)
    torch.testing.assert_close(got, rows.T @ rows, atol=1e-10, rtol=1e-12)
    assert torch.equal(got, got.T)


@pytest.mark.parametrize("width", [10, 300])
def test_running_products_sum_the_batches_products_in_their_rows_precision(width):
    """``RunningProducts`` adds each batch's XᵀX (upper block triangle, mirrored when read) and XᵀY
    by the products themselves: float64 rows give the float64 sums of the batches' products,
    float32 rows the same within float32 rounding; reads are float64 and symmetric, and a batch
    added after a read is counted in the next one."""
    generator = torch.Generator().manual_seed(width)
    batches = [(torch.randn(50, width, generator=generator, dtype=torch.float64),
                torch.randn(50, 7, generator=generator, dtype=torch.float64)) for _ in range(3)]
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        running = RunningProducts()
        gram = cross = 0
        for number, (x, y) in enumerate(batches):
            running.add(x.to(dtype), y)
            gram, cross = gram + x.T @ x, cross + x.T @ y
            if number == 1:  # a read in between does not freeze the sums
                assert running.gram.dtype == running.cross.dtype == torch.float64
        scale = float(gram.diagonal().mean())
        assert float((running.gram - gram).abs().max()) <= tolerance * scale
        assert float((running.cross - cross).abs().max()) <= tolerance * scale
        assert torch.equal(running.gram, running.gram.T)
    only = RunningProducts()
    only.add(batches[0][0])
    assert only.cross is None and torch.equal(only.gram, gram_matrix(batches[0][0]))


def test_a_bad_sink_rule_is_refused_in_one_line():
    """An unknown ``sink`` names the choices."""
    with pytest.raises(MiprunError, match="sink='first' must be one of average, skip"):
        NeuronRefitHealer(sink="first")


def test_layers_fitted_in_groups_under_a_memory_budget_give_the_one_pass_fits():
    """A budget smaller than one layer's normal equations fits every layer in its own pass, each
    abandoned after that layer, with the same solutions and residuals as one pass over all."""
    loaded = build_tiny("llama", layers=3, seed=35)
    width = loaded.adapter.ffn_width(0)
    selection = NeuronSelection({layer: list(range(layer, width, 2)) for layer in range(3)})
    ids = torch.randint(4, 80, (6, 12), generator=torch.Generator().manual_seed(36))
    whole, summary = NeuronRefitHealer(ridge=0.05)._fit(loaded.model, loaded.adapter, selection, ids)
    grouped, grouped_summary = NeuronRefitHealer(ridge=0.05, max_bytes=1)._fit(loaded.model, loaded.adapter, selection, ids)
    assert (summary["passes"], grouped_summary["passes"]) == (1, 3)
    for layer in range(3):
        torch.testing.assert_close(grouped[layer], whole[layer], atol=1e-9, rtol=1e-7)
    assert grouped_summary["layers"] == summary["layers"]
    assert all(row["relative_residual_after"] < row["relative_residual_before"] for row in summary["layers"])


def test_width_runs_are_healed_by_default_and_plain_on_request(text_file, tmp_path):
    common = dict(granularity="neuron", ratio=0.25, selector="random", calib=str(text_file), num_samples=4,
                  seq_len=16, heal_samples=8)
    healed = miprun.prune(build_tiny("llama", layers=3, seed=35), output=tmp_path / "healed", **common)
    plain = miprun.prune(build_tiny("llama", layers=3, seed=35), heal="none", save=False, **common)
    strategies = healed.report["strategies"]
    assert strategies["healer"]["name"] == "neuron-linear" and strategies["healer"]["why"] == "neuron default"
    assert "healer" not in plain.report["strategies"] and plain.report["healing_reason"] == "--heal none: plain removal"
    assert healed.report["removed_neurons"] == plain.report["removed_neurons"]
    layers = healed.report["surgery"]["healing"]["layers"]
    assert len(layers) == 3 and all(r["relative_residual_after"] < r["relative_residual_before"] for r in layers)
    assert healed.report["surgery"]["parameters_after"] == plain.report["surgery"]["parameters_after"]
    assert healed.report["quality"]["pruned_perplexity"] < plain.report["quality"]["pruned_perplexity"]
    named = miprun.prune(build_tiny("llama", layers=3, seed=35), heal="linear", save=False, **common)
    assert named.report["strategies"]["healer"]["name"] == "neuron-linear"  # 'linear' at neuron granularity
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "healed").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, healed.model(IDS).logits)


@pytest.mark.parametrize("architecture", WIDTH_ARCHITECTURES)
def test_the_width_default_reads_activations_and_heals_on_every_width_architecture(architecture, text_file):
    """The width default (FLAP's metric reads the collected FFN activations, then the refit) runs on
    every family that supports width pruning — OPT's FFN sees its tokens flattened — and removes
    the requested neurons."""
    loaded = build_tiny(architecture, layers=2, seed=39)
    width = loaded.adapter.ffn_width(0)
    result = miprun.prune(loaded, granularity="neuron", ratio=0.25, calib=str(text_file), num_samples=4,
                          seq_len=16, heal_samples=4, save=False)
    assert result.report["strategies"]["selector"]["name"] == "neuron-flap"
    assert result.report["collection"]["tokens"] > 0
    assert result.report["surgery"]["width_after"] == width - width // 4
    healing = result.report["surgery"]["healing"]  # on 4 × 16 tokens the refit may lose to plain removal: undone
    assert healing["held_out"]["kept"] in ("healed", "plain removal")
    assert healing.get("undone", healing)["sink"] == "average"
    with torch.no_grad():
        assert torch.isfinite(loaded.model(IDS).logits).all()


def test_every_width_architecture_is_healed_or_says_why(text_file):
    for architecture in ("mixtral", "qwen3_moe", "olmoe", "bloom"):
        with pytest.raises(MiprunError, match="neuron pruning is not supported"):
            miprun.prune(build_tiny(architecture, layers=2), granularity="neuron", ratio=0.25, selector="random",
                         calib=str(text_file), num_samples=2, seq_len=16, heal_samples=2, save=False)


def test_kept_columns_gathers_the_kept_neurons_of_3d_and_2d_activations():
    from miprun.healers.neuron_refit import kept_columns

    index = torch.tensor([0, 2, 5, 6])
    for shape in [(3, 5, 7), (15, 7)]:  # batch × tokens × neurons (Llama), tokens × neurons (OPT)
        value = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        assert torch.equal(kept_columns(value, index), value[..., index])
