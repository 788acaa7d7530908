"""Matrix-based Rényi α-entropy MI: not a Shannon-MI estimator, so its properties are tested."""

from __future__ import annotations

import math

import pytest
import torch

from miprun.errors import MiprunError
from miprun.estimators.renyi import RenyiEstimator, matrix_renyi_entropy


def raw_renyi(**options) -> RenyiEstimator:
    """The estimator in nats with per-feature standardisation, as these property tests need."""
    return RenyiEstimator(**{"normalize": "standardize", "self_normalize": False, **options})


def _correlated(n: int, rho: float, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I_d); y = ρ x + √(1−ρ²) z, coordinate-wise (d canonical correlations ρ)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    z = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1.0 - rho * rho) * z


def test_entropy_and_mi_bounds():
    n = 200
    x, y = _correlated(n, 0.8, d=3)
    est = raw_renyi()
    px, py = est.prepare(x), est.prepare(y)
    for p in (px, py):
        assert 0.0 <= p.entropy <= math.log(n) + 1e-12
    mi = est.mi_prepared(px, py)
    joint = est.joint_entropy(px, py)
    assert max(px.entropy, py.entropy) - 1e-9 <= joint <= px.entropy + py.entropy + 1e-9
    assert -1e-9 <= mi <= min(px.entropy, py.entropy) + 1e-9


@pytest.mark.parametrize("alpha", [1.0, 1.01, 3.0])
def test_general_alpha_bounds(alpha):
    n = 120
    x, y = _correlated(n, 0.7, seed=1)
    est = raw_renyi(alpha=alpha)
    px, py = est.prepare(x), est.prepare(y)
    assert 0.0 <= px.entropy <= math.log(n) + 1e-9
    assert -1e-9 <= est.mi_prepared(px, py) <= min(px.entropy, py.entropy) + 1e-9


def test_self_information_is_at_most_the_entropy():
    # I(X;X) = 2S(A) − S(A∘A) and A∘A is the Gram at width σ/√2, so I(X;X) < S(X), not = S(X)
    x, _ = _correlated(200, 0.0, seed=2)
    _, indep = _correlated(200, 0.0, seed=3)
    est = raw_renyi()
    px = est.prepare(x)
    self_mi = est.mi_prepared(px, px)
    assert self_mi <= px.entropy + 1e-12
    assert self_mi > 2.0 * est.mi(x, indep)


@pytest.mark.parametrize("sigma", ["scott", "median", "alignment"])
def test_mi_increases_with_correlation(sigma):
    est = raw_renyi(sigma=sigma, align_batch=150)
    values = [est.mi(*_correlated(300, rho, seed=4)) for rho in (0.0, 0.3, 0.6, 0.9, 0.99)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_independent_is_small_with_the_median_width():
    # Scott's width is small at d = 2 and leaves a large value for independent data (docstring)
    est = raw_renyi(sigma="median")
    independent = est.mi(*_correlated(300, 0.0, seed=4))
    assert independent < 0.05
    assert independent < 0.2 * est.mi(*_correlated(300, 0.6, seed=4))


def test_alpha2_fast_path_matches_eigenvalues():
    x, y = _correlated(150, 0.6, seed=5)
    est = raw_renyi(alpha=2.0)
    px, py = est.prepare(x), est.prepare(y)
    assert px.entropy == pytest.approx(matrix_renyi_entropy(px.gram, 2.0, eigen=True), abs=1e-6)
    joint_eig = matrix_renyi_entropy(px.gram.double() * py.gram.double(), 2.0, eigen=True)
    assert est.joint_entropy(px, py) == pytest.approx(joint_eig, abs=1e-6)
    # the α → 2 limit of the general path
    assert raw_renyi(alpha=2.0 + 1e-9).mi(x, y) == pytest.approx(est.mi(x, y), abs=1e-6)


def test_standardize_makes_mi_invariant_to_feature_scaling():
    x, y = _correlated(200, 0.7, d=3, seed=6)
    scale = torch.tensor([3.7, 0.01, 250.0])
    for sigma in ("scott", "median", "alignment"):
        est = raw_renyi(sigma=sigma, normalize="standardize")
        assert est.mi(x * scale, y) == pytest.approx(est.mi(x, y), abs=1e-5)


def test_width_is_chosen_per_variable():
    x, y = _correlated(200, 0.7, seed=7)
    est = raw_renyi(normalize="none")
    assert est.prepare(10.0 * y).sigma == pytest.approx(10.0 * est.prepare(y).sigma, rel=1e-6)
    assert est.prepare(x).sigma != pytest.approx(est.prepare(10.0 * y).sigma, rel=1e-3)
    assert raw_renyi(sigma=0.5).prepare(x).sigma == 0.5
    assert raw_renyi(sigma="0.5").prepare(x).sigma == 0.5


def _clustered(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens around 10 cluster centres (like repeated token types); y = x + noise, z = shuffled x."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(10, d, generator=g)
    x = centres[torch.randint(0, 10, (n,), generator=g)] + torch.randn(n, d, generator=g)
    y = x + 0.5 * torch.randn(n, d, generator=g)
    return x, y, x[torch.randperm(n, generator=g)]


@pytest.mark.parametrize("sigma", ["scott", "median", "alignment"])
def test_width_rules_separate_dependent_from_shuffled(sigma):
    n = 256
    x, y, z = _clustered(n, 64, seed=8)
    est = raw_renyi(sigma=sigma, align_batch=128)
    px = est.prepare(x)
    assert 0.01 < px.entropy < math.log(n) - 0.1
    # the k-NN target of ``alignment`` is local at 5 % of a batch, so it separates less (docstring)
    assert est.mi(x, y) > (1.2 if sigma == "alignment" else 2.0) * est.mi(x, z)


def test_alignment_width_stays_within_span_on_structureless_high_dim_data():
    x = torch.randn(256, 300, generator=torch.Generator().manual_seed(10))
    est = raw_renyi(sigma="alignment", align_batch=128, align_span=4.0)
    scott = raw_renyi().prepare(x).sigma
    sigma = est.prepare(x).sigma
    assert scott / 4.0 * (1 - 1e-9) <= sigma <= scott * 4.0 * (1 + 1e-9)


def test_prepare_once_reuse_equals_mi():
    x, y = _correlated(150, 0.5, seed=11)
    est = raw_renyi()
    assert est.mi_prepared(est.prepare(x), est.prepare(y)) == est.mi(x, y)


def test_max_samples_subsamples_deterministically():
    x, y = _correlated(500, 0.5, seed=12)
    est = raw_renyi(max_samples=100)
    assert est.prepare(x).n == 100
    # the same tokens for every variable: every fifth, chosen by position, not by a random draw
    every_fifth = torch.arange(0, 500, 5)
    assert est.mi(x, y) == pytest.approx(raw_renyi().mi(x[every_fifth], y[every_fifth]), rel=1e-9)
    assert est.mi(x, y) != pytest.approx(raw_renyi().mi(x[every_fifth + 1], y[every_fifth + 1]), rel=1e-6)


def test_errors_are_one_line_with_a_fix():
    est = raw_renyi()
    with pytest.raises(MiprunError, match="num-samples"):
        est.prepare(torch.randn(2, 5))
    with pytest.raises(MiprunError, match="same tokens"):
        est.mi(torch.randn(20, 2), torch.randn(30, 2))
    with pytest.raises(MiprunError, match="did you mean 'median'"):
        raw_renyi(sigma="medain")
    with pytest.raises(MiprunError, match="alpha"):
        raw_renyi(alpha=0)
    with pytest.raises(MiprunError, match="NaN"):
        est.prepare(torch.full((10, 2), float("nan")))


def test_registered_under_its_name():
    from miprun.registry import build_registry

    est = build_registry().create("estimator", "renyi", alpha=2, sigma="median")
    assert est.name == "renyi" and est.alpha == 2.0 and est.sigma == "median"


def test_self_normalised_mi_is_one_for_the_same_variable_and_scale_free():
    # clustered tokens (structure to share, like hidden states): y a noisy copy of x, z shuffled x
    x, y, z = _clustered(512, 64, seed=11)
    est = RenyiEstimator()  # defaults: rms tokens, self-normalised
    assert est.normalize == "rms" and est.self_normalize
    assert est.mi(x, x) == pytest.approx(1.0, abs=1e-9)
    assert est.mi(x, 7.0 * x) == pytest.approx(1.0, abs=1e-9)
    dependent, shuffled = est.mi(x, y), est.mi(x, z)
    assert 0.0 <= shuffled < 0.3 < 0.9 < dependent <= 1.0
    raw = raw_renyi(normalize="rms")
    px, py = raw.prepare(x), raw.prepare(y)
    expected = raw.mi_prepared(px, py) / math.sqrt(raw.mi_prepared(px, px) * raw.mi_prepared(py, py))
    assert dependent == pytest.approx(expected, rel=1e-9)
    with pytest.raises(MiprunError, match="self_normalize"):
        RenyiEstimator(self_normalize="maybe")
