"""Neuron-level (pairwise) estimators: agreement with the block estimator and the kernel helpers,
and the kernel-width rule on data where the aligned width is known to beat Scott's rule."""

from __future__ import annotations

import pytest
import torch

from miprun.errors import MiprunError
from miprun.estimators import kernels
from miprun.estimators.neuron_gaussian import NeuronGaussianEstimator
from miprun.estimators.neuron_mi import (
    aligned_widths,
    renyi_entropies,
    scott_widths,
    upper_pairs,
)
from miprun.estimators.neuron_pearson import NeuronPearsonEstimator
from miprun.estimators.neuron_renyi import NeuronRenyiEstimator
from miprun.estimators.renyi import RenyiEstimator, matrix_renyi_entropy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vectorised_alignment_search_matches_the_scalar_reference():
    torch.manual_seed(0)
    x = torch.randn(40, 6, dtype=torch.float64)
    x[:, 1] = x[:, 0] ** 3 + 0.1 * torch.randn(40, dtype=torch.float64)
    target = kernels.gaussian_gram(kernels.pairwise_sq_dists(x), kernels.scott_width(x, 0.8))
    initial = scott_widths(x, 0.8)
    for i in range(6):
        assert float(initial[i]) == pytest.approx(kernels.scott_width(x[:, i], 0.8))
    ours = aligned_widths(x, target, initial, span=8.0)
    reference = [kernels.aligned_width(x[:, i], target, float(initial[i]), span=8.0) for i in range(6)]
    torch.testing.assert_close(ours, torch.tensor(reference, dtype=torch.float64), rtol=1e-6, atol=0)


def test_width_search_brackets_the_maximum_to_its_tolerance_with_fewer_evaluations_than_golden_section():
    """Smooth peaks inside the range, a peak beyond its end (the search stops at the edge) and a
    flat function (left at the centre, value ≤ 0): each answer within ``rel_tol`` of the true
    maximiser, never worse than the best grid point, and a smooth peak found in fewer evaluations
    after the grid than the 12 a golden-section search to 1 % takes from the grid's bracket."""
    peaks = torch.tensor([0.3, -1.234, 2.9, 5.0, 0.0], dtype=torch.float64)  # 5.0: beyond ln 8 ≈ 2.08
    widths = torch.tensor([1.0, 0.4, 2.0, 1.0, 1.0], dtype=torch.float64)
    asked: list[int] = []

    def evaluate(log_sigma, rows):
        asked.append(len(rows))
        value = 1.0 / (1.0 + ((log_sigma - peaks[rows]) / widths[rows]) ** 2) + 0.1 * torch.sin(log_sigma)  # not symmetric
        return torch.where(rows == 4, torch.zeros_like(value), value)  # the last search: flat at 0

    centre = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.1], dtype=torch.float64)
    found, value = kernels.maximise_log_width(evaluate, centre, span=8.0, grid_points=9, rel_tol=1e-2)
    dense = centre[:4, None] + torch.linspace(-2.0794, 2.0794, 400_001, dtype=torch.float64)[None, :]
    expected = dense[torch.arange(4), evaluate(dense, torch.arange(4)[:, None].expand_as(dense)).argmax(dim=1)]
    assert torch.all((found[:4] - expected).abs() <= 1e-2) and float(expected[3] - centre[3]) > 2.07  # at the edge
    assert float(found[4]) == pytest.approx(float(centre[4] - torch.log(torch.tensor(8.0))))  # first of equal grid values
    assert float(value[4]) == 0.0
    grid_only = evaluate(centre[:, None] + torch.linspace(-2.0794, 2.0794, 9, dtype=torch.float64)[None, :],
                         torch.arange(5)[:, None].expand(5, 9)).max(dim=1).values
    assert torch.all(value >= grid_only - 1e-12)
    refinements = len(asked) - 9 - 2  # the grid's 9 calls, and the two checks above
    assert 0 < refinements < 12


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_pairwise_renyi_equals_the_block_estimator_pair_by_pair(alpha):
    torch.manual_seed(1)
    x = torch.randn(24, 5, dtype=torch.float64)
    x[:, 2] = torch.tanh(x[:, 0]) + 0.2 * x[:, 2]
    est = NeuronRenyiEstimator(alpha=alpha, width=0.7, batch_size=24, mi_batches=1, normalize="none")
    matrix = est.pairwise(x)
    block = RenyiEstimator(alpha=alpha, sigma=0.7, normalize="none", self_normalize=False)
    for i, j in [(0, 1), (0, 2), (3, 4), (1, 1)]:
        assert float(matrix[i, j]) == pytest.approx(block.mi(x[:, i], x[:, j]), abs=2e-4)
    torch.testing.assert_close(matrix, matrix.T)
    # the Estimator protocol on two scalar neurons is one entry of the matrix
    assert est.mi(x[:, 0], x[:, 2:3]) == pytest.approx(float(matrix[0, 2]), abs=1e-6)
    with pytest.raises(MiprunError, match="scalar neurons"):
        est.mi(x[:, :2], x[:, 2])


def test_batched_entropy_and_pair_chunks():
    torch.manual_seed(2)
    a = torch.randn(3, 8, 8, dtype=torch.float64)
    grams = a @ a.transpose(1, 2)
    for alpha in (1.0, 1.01, 3.0):
        batched = renyi_entropies(grams, alpha)
        for k in range(3):
            assert float(batched[k]) == pytest.approx(matrix_renyi_entropy(grams[k], alpha, eigen=True), abs=1e-9)
    pairs = [p for chunk in upper_pairs(7, 4) for p in zip(*(t.tolist() for t in chunk))]
    assert sorted(pairs) == [(i, j) for i in range(7) for j in range(i + 1, 7)]


def _outlier_layer(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer driven by one latent z. Neuron 0 is z with 8 % of tokens multiplied by 50 (the
    massive activations LLM neurons have), neuron 1 a clean noisy copy of z, neuron 2 independent,
    neurons 3.. smooth functions of z plus noise. Returns (activations, z)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g)
    spiky = z.clone()
    outliers = torch.rand(n, generator=g) < 0.08
    spiky[outliers] *= 50.0
    copy = z + 0.3 * torch.randn(n, generator=g)
    other = torch.randn(n, generator=g)
    context = [torch.tanh(z * (0.5 + k / 24)) + 0.3 * torch.randn(n, generator=g) for k in range(24)]
    return torch.stack([spiky, copy, other, *context], dim=1), z


@pytest.mark.parametrize("seed", [0, 1])
def test_aligned_width_beats_scott_on_a_neuron_with_massive_outliers(seed):
    """Scott's rule takes the width from the standard deviation, which 8 % of huge outliers inflate
    about fifteenfold, so the kernel cannot resolve the other 92 % of tokens. Aligning with the layer's
    kernel (where z's neighbourhoods are visible) shrinks the width. Known better: (1) the neuron's
    kernel then matches the kernel of the true latent z more closely, and (2) the MI separates the
    neuron's real copy from an independent neuron far more clearly."""
    x, z = _outlier_layer(seed=seed)
    results = {}
    for rule in ("aligned", "scott"):
        est = NeuronRenyiEstimator(width=rule, batch_size=64, mi_batches=4)
        standardized = (x - x.mean(0)) / x.std(0, unbiased=False)
        widths = est.widths(standardized.double())
        matrix = est.pairwise(x)
        nmi = matrix / (matrix.diagonal()[:, None] * matrix.diagonal()[None, :]).sqrt()
        tokens = est.batches(x.shape[0])[0]
        spiky = standardized[tokens, 0].double()
        truth = kernels.gaussian_gram(kernels.pairwise_sq_dists(z[tokens]), kernels.scott_width(z[tokens], 0.8))
        alignment = kernels.centered_alignment(kernels.gaussian_gram(kernels.pairwise_sq_dists(spiky), float(widths[0])), truth)
        results[rule] = {"width": float(widths[0]), "copy": float(nmi[0, 1]), "other": float(nmi[0, 2]),
                         "alignment": alignment}
    aligned, scott = results["aligned"], results["scott"]
    assert aligned["width"] < scott["width"] / 2
    assert aligned["alignment"] > scott["alignment"] + 0.2
    assert aligned["copy"] - aligned["other"] > scott["copy"] - scott["other"] + 0.2
    assert aligned["copy"] > 0.6 > scott["copy"]


def test_width_ema_smooths_batches_and_options_are_checked():
    x, _ = _outlier_layer(n=256)
    info: dict = {}
    NeuronRenyiEstimator(alpha=2, width_batches=3).pairwise(x, info=info)
    assert info["width_batches"] == 3 and info["alpha"] == 2 and info["batch_size"] == 128
    assert info["aligned_over_scott_median"] > 0 and info["seconds"] >= info["width_seconds"]
    with pytest.raises(MiprunError, match="width"):
        NeuronRenyiEstimator(width="silverman")
    with pytest.raises(MiprunError, match="alpha"):
        NeuronRenyiEstimator(alpha=0)
    with pytest.raises(MiprunError, match="at least 4 tokens"):
        NeuronRenyiEstimator().pairwise(torch.randn(3, 5))


def test_copula_and_pearson_fast_paths():
    torch.manual_seed(3)
    base = torch.randn(400, 3, dtype=torch.float64)
    x = torch.cat([base, torch.exp(base[:, :1]), torch.zeros(400, 1, dtype=torch.float64)], dim=1)
    copula = NeuronGaussianEstimator().pairwise(x)
    # a strictly increasing map is an exact copy for the copula, not for Pearson
    assert float(copula[0, 3]) > 10 and float(copula[0, 1]) < 0.05 and float(copula[0, 4]) == 0.0
    pearson = NeuronPearsonEstimator().pairwise(x)
    assert 0.6 < float(pearson[0, 3]) < 0.95 and float(pearson[2, 2]) == pytest.approx(1.0)
    torch.testing.assert_close(pearson, pearson.T)
