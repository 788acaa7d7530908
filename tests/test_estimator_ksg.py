"""KSG (algorithm 1) against closed-form MI."""

from __future__ import annotations

import math

import pytest
import torch

from miprun.errors import MiprunError
from miprun.estimators.ksg import KSGEstimator


def _correlated(n: int, rhos: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """x ~ N(0, I); y_i = ρ_i x_i + √(1−ρ_i²) z_i; true MI = −½ Σ log(1 − ρ_i²)."""
    g = torch.Generator().manual_seed(seed)
    rho = torch.tensor(rhos, dtype=torch.float64)
    x = torch.randn(n, len(rhos), generator=g, dtype=torch.float64)
    y = rho * x + (1 - rho**2).sqrt() * torch.randn(n, len(rhos), generator=g, dtype=torch.float64)
    return x.float(), y.float(), float(-0.5 * torch.log1p(-(rho**2)).sum())


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.9])
def test_scalar_gaussians(rho):
    x, y, truth = _correlated(2000, [rho], seed=0)
    assert KSGEstimator(k=3).mi(x, y) == pytest.approx(truth, abs=0.05)


def test_two_dimensional_gaussians():
    # one run has a standard deviation of ≈ 0.04 at n = 2000; average three
    runs = [_correlated(2000, [0.8, 0.5], seed=s) for s in (1, 2, 3)]
    estimate = sum(KSGEstimator(k=3).mi(x, y) for x, y, _ in runs) / 3
    assert estimate == pytest.approx(runs[0][2], abs=0.05)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_additive_uniform_noise(eps):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2000, 1, generator=g, dtype=torch.float64)
    y = x + eps * (2 * torch.rand(2000, 1, generator=g, dtype=torch.float64) - 1)
    truth = eps - math.log(2 * eps)
    assert KSGEstimator(k=3).mi(x, y) == pytest.approx(truth, abs=0.05)


def test_independent_is_near_zero():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    assert abs(KSGEstimator(k=3).mi(x, y)) < 0.03


def test_nearly_invariant_to_monotone_coordinate_maps():
    x, y, _ = _correlated(2000, [0.7, 0.4], seed=6)
    est = KSGEstimator(k=3)
    base = est.mi(x, y)
    mild_x = torch.sigmoid(x)
    mild_y = torch.stack([torch.atan(y[:, 0]), 3 * y[:, 1] + 1], dim=1)
    assert est.mi(mild_x, mild_y) == pytest.approx(base, abs=0.03)
    # heavy-tailed maps move the finite-sample estimate more (0.41 → 0.34 here; truth 0.42)
    heavy_x = torch.stack([x[:, 0].exp(), x[:, 1].pow(3)], dim=1)
    heavy_y = torch.stack([-y[:, 0], torch.sinh(2 * y[:, 1])], dim=1)
    assert est.mi(heavy_x, heavy_y) == pytest.approx(base, abs=0.1)


def test_prepare_once_reuse_equals_mi():
    x, y, _ = _correlated(500, [0.6], seed=7)
    est = KSGEstimator()
    px = est.prepare(x)
    assert est.mi_prepared(px, est.prepare(y)) == est.mi(x, y)
    assert est.mi_prepared(px, px) > est.mi_prepared(px, est.prepare(y))  # a prepared variable is not consumed


def test_chunking_does_not_change_the_result():
    x, y, _ = _correlated(300, [0.6, 0.3], seed=8)
    whole = KSGEstimator(chunk_mb=64).mi(x, y)
    assert KSGEstimator(chunk_mb=0.01).mi(x, y) == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize("reduce", ["pca", "random"])
def test_high_dimensional_inputs_are_reduced(reduce):
    # 3 informative directions hidden in 40 features; reduction to 8 keeps the estimate useful
    g = torch.Generator().manual_seed(9)
    x, y, truth = _correlated(1000, [0.9, 0.9, 0.9], seed=9)
    mix_x = torch.randn(3, 40, generator=g)
    mix_y = torch.randn(3, 40, generator=g)
    big_x = x @ mix_x + 0.01 * torch.randn(1000, 40, generator=g)
    big_y = y @ mix_y + 0.01 * torch.randn(1000, 40, generator=g)
    est = KSGEstimator(reduce=reduce, dim=8, seed=1)
    assert est.prepare(big_x).points.shape == (1000, 8)
    value = est.mi(big_x, big_y)
    assert 0.75 * truth < value < 1.05 * truth
    assert value == KSGEstimator(reduce=reduce, dim=8, seed=1).mi(big_x, big_y)  # a fresh estimator, the same seed
    if reduce == "random":  # the projection is drawn from the seed
        assert value != KSGEstimator(reduce=reduce, dim=8, seed=2).mi(big_x, big_y)


def test_repeated_rows_give_a_finite_estimate():
    # repeated tokens give identical states (ε = 0 without jitter)
    x, y, _ = _correlated(200, [0.6], seed=10)
    x, y = torch.cat([x, x[:50]]), torch.cat([y, y[:50]])
    value = KSGEstimator().mi(x, y)
    assert math.isfinite(value) and value > 0


def test_errors_are_one_line_with_a_fix():
    with pytest.raises(MiprunError, match="num-samples"):
        KSGEstimator(k=3).prepare(torch.randn(5, 2))
    with pytest.raises(MiprunError, match="same tokens"):
        KSGEstimator().mi(torch.randn(20, 2), torch.randn(30, 2))
    with pytest.raises(MiprunError, match="did you mean 'pca'"):
        KSGEstimator(reduce="pcaa")
    with pytest.raises(MiprunError, match="k="):
        KSGEstimator(k=0)


def test_registered_under_its_name():
    from miprun.registry import build_registry

    est = build_registry().create("estimator", "ksg", k=5, reduce="random", standardize="false")
    assert est.name == "ksg" and est.k == 5 and est.reduce == "random" and est.standardize is False
