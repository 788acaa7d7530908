"""Kernel helpers: distances, widths, alignment and the width EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from miprun.estimators import kernels
from miprun.linalg import double_center


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pairwise_sq_dists_matches_explicit_differences():
    x = torch.randn(50, 7, generator=_gen(0), dtype=torch.float64)
    dist = kernels.pairwise_sq_dists(x)
    explicit = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    assert torch.allclose(dist, explicit, atol=1e-12)
    assert torch.equal(dist, dist.T)
    assert bool((torch.diagonal(dist) == 0).all())
    assert bool((dist >= 0).all())


def test_pairwise_sq_dists_is_precise_under_a_large_offset():
    # ‖a‖² + ‖b‖² − 2a·b on uncentred data would lose every digit here
    x = 1e6 + 1e-3 * torch.randn(40, 5, generator=_gen(1), dtype=torch.float64)
    dist = kernels.pairwise_sq_dists(x)
    explicit = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    assert torch.allclose(dist, explicit, rtol=1e-6, atol=1e-18)


def test_scalar_input_and_gram():
    x = torch.tensor([0.0, 1.0, 3.0])
    dist = kernels.pairwise_sq_dists(x)
    assert dist[0, 2].item() == pytest.approx(9.0)
    gram = kernels.gaussian_gram(dist, 2.0)
    assert gram[0, 1].item() == pytest.approx(math.exp(-1.0 / 8.0))
    assert torch.allclose(torch.diagonal(gram), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        kernels.gaussian_gram(dist, 0.0)


def test_median_width_is_median_pairwise_distance():
    x = torch.randn(31, 3, generator=_gen(2), dtype=torch.float64)
    dist = kernels.pairwise_sq_dists(x)
    pairs = dist[torch.triu_indices(31, 31, 1).unbind()].sqrt().numpy()
    lower_median = np.sort(pairs)[(pairs.size - 1) // 2]
    assert kernels.median_width(dist) == pytest.approx(lower_median, rel=1e-12)
    assert kernels.median_width(torch.zeros(5, 5, dtype=torch.float64)) == 1.0


def test_scott_width_formula_and_scaling():
    x = torch.randn(400, 6, generator=_gen(3), dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    expected = 0.8 * math.sqrt(6) * 400 ** (-1 / 10)
    assert kernels.scott_width(x, 0.8) == pytest.approx(expected, rel=1e-10)
    assert kernels.scott_width(5.0 * x, 0.8) == pytest.approx(5.0 * expected, rel=1e-10)


def test_scott_width_is_not_degenerate_at_d576():
    n, d = 256, 576
    x = torch.randn(n, d, generator=_gen(4), dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    dist = kernels.pairwise_sq_dists(x)
    off = ~torch.eye(n, dtype=torch.bool)
    plain = kernels.gaussian_gram(dist, 0.8 * n ** (-1 / (4 + d)))  # the uncorrected rule
    assert float(plain[off].max()) < 1e-100  # identity Gram: every entropy would be log n
    gram = kernels.gaussian_gram(dist, kernels.scott_width(x, 0.8))
    assert 0.05 < float(gram[off].mean()) < 0.95
    a = gram / n
    entropy2 = -math.log(float(a.pow(2).sum()))
    assert entropy2 < math.log(n) - 0.5


def test_centered_alignment_properties():
    x = torch.randn(60, 4, generator=_gen(5), dtype=torch.float64)
    gram = kernels.gaussian_gram(kernels.pairwise_sq_dists(x), 2.0)
    assert kernels.centered_alignment(gram, 3.0 * gram) == pytest.approx(1.0, abs=1e-12)
    other = kernels.gaussian_gram(kernels.pairwise_sq_dists(torch.randn(60, 4, generator=_gen(6))), 2.0)
    value = kernels.centered_alignment(gram, other)
    assert -1.0 <= value < 0.5
    # the fast centred norm used by aligned_width agrees with the explicit one
    assert kernels._centered_norm(gram) == pytest.approx(float(double_center(gram).norm()), rel=1e-10)


def test_knn_graph():
    x = torch.randn(30, 2, generator=_gen(7), dtype=torch.float64)
    graph = kernels.knn_graph(kernels.pairwise_sq_dists(x), 4)
    assert torch.equal(graph, graph.T)
    assert bool((torch.diagonal(graph) == 1).all())
    assert bool((graph.sum(1) >= 5).all())


def test_aligned_width_recovers_the_width_of_a_target_kernel():
    x = torch.randn(150, 3, generator=_gen(8), dtype=torch.float64)
    dist = kernels.pairwise_sq_dists(x)
    true_sigma = 1.7
    target = kernels.gaussian_gram(dist, true_sigma)
    start = true_sigma / 10.0  # far too small
    found = kernels.aligned_width(x, target, start)
    assert found == pytest.approx(true_sigma, rel=0.02)
    assert found == pytest.approx(kernels.aligned_width(None, target, start, sq_dists=dist), rel=1e-12)


def test_aligned_width_improves_on_scott_for_a_label_kernel():
    # a scalar "neuron" whose reference kernel only says which half of the range a sample is in:
    # Scott's width (≈ 0.9, set by local density) is far too small to see that structure; the
    # aligned width moves to the maximiser of the alignment (checked against a fine grid)
    x = 10.0 * torch.rand(120, generator=_gen(9), dtype=torch.float64)
    high = x > 5.0
    target = (high[:, None] == high[None, :]).to(torch.float64)
    dist = kernels.pairwise_sq_dists(x)
    scott = kernels.scott_width(x, 0.8)
    found = kernels.aligned_width(x, target, scott)

    def align(sigma: float) -> float:
        return kernels.centered_alignment(kernels.gaussian_gram(dist, sigma), target)

    best_on_grid = max(align(s) for s in np.geomspace(scott / 16, scott * 16, 400))
    assert found > 2.0 * scott
    assert align(found) > align(scott) + 0.2
    assert align(found) >= best_on_grid - 1e-4


def test_width_ema():
    ema = kernels.WidthEMA(beta=0.5)
    assert ema.value is None
    assert ema.update(4.0) == 4.0
    assert ema.update(2.0) == 3.0
    assert ema.update(3.0) == 3.0
    with pytest.raises(ValueError):
        kernels.WidthEMA(beta=1.0)


def test_ema_horizon_bounds_what_the_skipped_values_could_move():
    values = torch.rand(200, generator=torch.Generator().manual_seed(0)).tolist()
    for beta in (0.0, 0.5, 0.9):
        keep = kernels.ema_horizon(beta, len(values))
        full, tail = kernels.WidthEMA(beta), kernels.WidthEMA(beta)
        for v in values:
            full.update(v)
        for v in values[len(values) - keep:]:
            tail.update(v)
        spread = max(values) - min(values)
        assert abs(full.value - tail.value) <= kernels.EMA_TAIL * spread
        if keep > 1:  # one value fewer would break the bound's guarantee
            assert beta ** (keep - 2) > kernels.EMA_TAIL
    assert kernels.ema_horizon(0.5, len(values)) == 11 and kernels.ema_horizon(0.0, 7) == 1
    assert kernels.ema_horizon(0.5, 3) == 3 and kernels.ema_horizon(0.99, 0) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponentials_are_exact_where_normal_and_zero_where_they_would_be_subnormal(dtype):
    """``exp_without_subnormals`` gives ``exp`` bit for bit wherever the result is at least four
    times the smallest normal number, and 0 below it: no subnormal value, whatever the argument;
    in place, in the tensor it was given."""
    tiny = torch.finfo(dtype).tiny
    low = math.log(tiny)
    exponents = torch.cat([torch.linspace(low - 30.0, 0.0, 20001, dtype=dtype),
                           torch.tensor([-float("inf"), low - 1e4, -1e-30], dtype=dtype)])
    given = exponents.clone()
    got = kernels.exp_without_subnormals(given)
    assert got is given
    exact = torch.exp(exponents)
    kept = exact > 4.0 * tiny
    assert torch.equal(got[kept], exact[kept])
    assert bool((got[~kept] == 0).all())
    assert int(kept.sum()) > 10000 and int((~kept).sum()) > 500
    assert not bool(((got != 0) & (got.abs() < tiny)).any())
