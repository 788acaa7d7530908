"""Gaussian log-det MI against closed-form MI of correlated Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from miprun.errors import MiprunError
from miprun.estimators.gaussian import GaussianEstimator, wishart_logdet_bias


def _correlated(
    n: int, rhos: list[float], d_x: int, d_y: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Canonical correlations ``rhos`` hidden behind random invertible mixes; true MI −½Σlog(1−ρ²)."""
    g = torch.Generator().manual_seed(seed)
    k = len(rhos)
    rho = torch.tensor(rhos, dtype=torch.float64)
    x = torch.randn(n, d_x, generator=g, dtype=torch.float64)
    y = torch.randn(n, d_y, generator=g, dtype=torch.float64)
    y[:, :k] = rho * x[:, :k] + (1 - rho**2).sqrt() * y[:, :k]
    mix_x = torch.randn(d_x, d_x, generator=g, dtype=torch.float64) + 3 * torch.eye(d_x, dtype=torch.float64)
    mix_y = torch.randn(d_y, d_y, generator=g, dtype=torch.float64) + 3 * torch.eye(d_y, dtype=torch.float64)
    truth = float(-0.5 * torch.log1p(-(rho**2)).sum())
    return (x @ mix_x).float(), (y @ mix_y).float(), truth


def test_low_dimensional_canonical_correlations_tight():
    x, y, truth = _correlated(20000, [0.9, 0.5, 0.2], 3, 4, seed=0)
    assert GaussianEstimator().mi(x, y) == pytest.approx(truth, abs=0.025)


def test_bias_correction_removes_the_dimension_bias():
    # d_x = d_y = 40 at n = 400: the plug-in value is ≈ d_x d_y / 2n = 2 nats too high
    corrected, plugin = [], []
    for seed in (1, 2, 3):
        x, y, truth = _correlated(400, [0.9, 0.7, 0.5], 40, 40, seed=seed)
        corrected.append(GaussianEstimator(pca_rank=None).mi(x, y))
        plugin.append(GaussianEstimator(pca_rank=None, bias_correction=False).mi(x, y))
    assert sum(corrected) / 3 == pytest.approx(truth, abs=0.12)
    assert sum(plugin) / 3 > truth + 1.5


def test_independent_is_near_zero_with_correction():
    values = []
    for seed in (4, 5, 6):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(500, 20, generator=g), torch.randn(500, 20, generator=g)
        values.append(GaussianEstimator(pca_rank=None).mi(x, y))
    assert abs(sum(values) / 3) < 0.04
    assert all(abs(v) < 0.1 for v in values)


def test_wishart_bias_formula():
    # b(1) = ψ((n−1)/2) + log(2/(n−1)) is the mean of log(sample variance / variance)
    n = 10
    g = torch.Generator().manual_seed(7)
    samples = torch.randn(200000, n, generator=g, dtype=torch.float64)
    empirical = float(samples.var(dim=1).log().mean())
    assert wishart_logdet_bias(1, n) == pytest.approx(empirical, abs=0.01)
    assert wishart_logdet_bias(0, n) == 0.0
    with pytest.raises(ValueError):
        wishart_logdet_bias(10, 10)


def test_invariant_to_affine_maps():
    x, y, _ = _correlated(1000, [0.8, 0.3], 3, 3, seed=8)
    est = GaussianEstimator()
    shifted = 10.0 + x.double() * torch.tensor([1e-3, 5.0, 70.0], dtype=torch.float64)
    assert est.mi(shifted, y) == pytest.approx(est.mi(x, y), abs=1e-9)


def test_copula_is_exactly_invariant_to_monotone_coordinate_maps():
    x, y, truth = _correlated(3000, [0.8, 0.5], 2, 2, seed=9)
    est = GaussianEstimator(copula=True)
    base = est.mi(x, y)
    warped_x = torch.stack([x[:, 0].double().exp(), x[:, 1].double().pow(3)], dim=1)
    warped_y = torch.stack([torch.sigmoid(y[:, 0].double()), 5 * y[:, 1].double() - 2], dim=1)
    assert est.mi(warped_x, warped_y) == pytest.approx(base, abs=1e-9)
    assert base == pytest.approx(truth, abs=0.05)
    # the plain Gaussian estimator is fooled by the same maps
    assert abs(GaussianEstimator().mi(warped_x, warped_y) - truth) > 0.1


def test_pca_rank_gives_the_mi_of_the_projections():
    # signal in 4 high-variance directions of 100 features: 8 principal components keep it
    g = torch.Generator().manual_seed(10)
    x, y, truth = _correlated(600, [0.9, 0.8, 0.6, 0.4], 4, 4, seed=10)
    big_x = torch.cat([5 * x, torch.randn(600, 96, generator=g)], dim=1)
    big_y = torch.cat([5 * y, torch.randn(600, 96, generator=g)], dim=1)
    est = GaussianEstimator(pca_rank=8)
    assert est.prepare(big_x).rank == 8
    assert est.mi(big_x, big_y) == pytest.approx(truth, abs=0.12)


def test_rank_deficient_input_drops_null_directions():
    x, y, truth = _correlated(500, [0.7], 2, 2, seed=11)
    padded = torch.cat([x, x[:, :1] * 2, torch.zeros(500, 3)], dim=1)  # rank 2 in 6 features
    est = GaussianEstimator(pca_rank=None)
    assert est.prepare(padded).rank == 2
    assert est.mi(padded, y) == pytest.approx(est.mi(x, y), abs=1e-3)


def test_prepare_once_reuse_equals_mi():
    x, y, _ = _correlated(300, [0.6], 3, 3, seed=12)
    est = GaussianEstimator()
    assert est.mi_prepared(est.prepare(x), est.prepare(y)) == est.mi(x, y)


def test_too_few_samples_names_the_fix():
    g = torch.Generator().manual_seed(13)
    x, y = torch.randn(100, 576, generator=g), torch.randn(100, 576, generator=g)
    with pytest.raises(MiprunError, match=r"n=100.*set pca_rank"):
        GaussianEstimator(pca_rank=None).mi(x, y)
    with pytest.raises(MiprunError, match=r"n=100, d_x\+d_y=128\).*lower pca_rank"):
        GaussianEstimator(pca_rank=64).mi(x, y)
    x, y = torch.randn(300, 60, generator=g), torch.randn(300, 60, generator=g)
    assert math.isfinite(GaussianEstimator(pca_rank=64).mi(x, y))
    with pytest.raises(MiprunError, match="num-samples"):
        GaussianEstimator().prepare(torch.randn(3, 2))


def test_option_errors_and_registration():
    from miprun.registry import build_registry

    with pytest.raises(MiprunError, match="pca_rank"):
        GaussianEstimator(pca_rank="many")
    est = build_registry().create("estimator", "gaussian", pca_rank="none", copula="true")
    assert est.name == "gaussian" and est.pca_rank is None and est.copula is True
    assert GaussianEstimator(pca_rank=0).pca_rank is None
