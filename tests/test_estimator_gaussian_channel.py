"""The gaussian-channel estimator against the closed form of an additive Gaussian channel."""

from __future__ import annotations

import math

import pytest
import torch

from miprun.errors import MiprunError
from miprun.estimators.gaussian_channel import GaussianChannelEstimator


def channel(power: float, noise: float, n: int = 300, d: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * math.sqrt(power)
    return x, x + torch.randn(n, d, generator=g) * math.sqrt(noise)


@pytest.mark.parametrize("power, noise", [(1.0, 0.25), (1.0, 1.0), (4.0, 0.1)])
def test_equals_the_shannon_mi_per_dimension_of_a_gaussian_channel(power, noise):
    x, y = channel(power, noise)
    truth = 0.5 * math.log(1 + power / noise)  # I(X;Y)/d for X ~ N(0, P·I), Y = X + N(0, σ²·I)
    assert GaussianChannelEstimator().mi(x, y) == pytest.approx(truth, abs=0.02)


def test_smaller_update_means_more_information_and_identity_is_maximal():
    x, _ = channel(1.0, 1.0)
    g = torch.Generator().manual_seed(1)
    update = torch.randn(x.shape, generator=g)
    values = [GaussianChannelEstimator().mi(x, x + scale * update) for scale in (2.0, 1.0, 0.5, 0.1)]
    assert values == sorted(values)
    assert GaussianChannelEstimator().mi(x, x) > values[-1] + 10


def test_rms_normalisation_ignores_token_scale_and_shapes_must_match():
    x, y = channel(1.0, 0.5)
    est = GaussianChannelEstimator(normalize="rms")
    assert est.mi(3 * x, 3 * y) == pytest.approx(est.mi(x, y))
    with pytest.raises(MiprunError, match="same shape"):
        est.mi(x, y[:, :10])
    with pytest.raises(MiprunError):
        GaussianChannelEstimator(normalize="whiten")
