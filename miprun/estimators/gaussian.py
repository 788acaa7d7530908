"""Gaussian (log-det) mutual information with the Wishart bias correction.

For jointly Gaussian X (d_x) and Y (d_y) with covariance Σ = [[Σ_xx, Σ_xy], [Σ_yx, Σ_yy]],

    I(X; Y) = ½ [log det Σ_xx + log det Σ_yy − log det Σ] = −½ Σ_i log(1 − ρ_i²),

ρ_i the canonical correlations (Hotelling 1936), i.e. the singular values of
C = Σ_xx^(−½) Σ_xy Σ_yy^(−½), because log det Σ = log det Σ_xx + log det Σ_yy + log det(I − CᵀC)
(Schur complement). For any other distribution with the same covariance this is a lower bound on
the MI (the Gaussian maximises entropy at fixed covariance).

Implementation: :meth:`GaussianEstimator.prepare` centres each variable, optionally rank-transforms
it to a Gaussian copula (``copula``; Φ⁻¹(rank/(n+1)) per coordinate, which makes the estimate exactly
invariant to strictly monotone per-coordinate maps), expresses it in its principal axes (keeping the
top ``pca_rank`` and dropping numerically null directions) and whitens it, W = scores / √(λ + ridge).
:meth:`~GaussianEstimator.mi_prepared` then needs only C = WₓᵀW_y / (N − 1) and its singular values:
O(N d_x d_y) per pair. All of it runs in float64; the ridge (relative to the largest variance) is the
usual Σ + εI regularisation. When nothing is projected away, features are standardised first: this
leaves the MI unchanged and keeps badly scaled features (variance ratios of 10⁹ and more) above the
eigenvalue floor and the ridge.

Bias: with N samples the plug-in estimate is biased upwards by ≈ d_x d_y / 2N. For the sample
covariance S (denominator N − 1) of p Gaussian variables, E[log det S] − log det Σ = b(p) with

    b(p) = Σ_{i=1..p} [ψ((N − i)/2) + log(2/(N − 1))]      (Wishart; e.g. Misra, Singh & Demchuk 2005),

so the corrected estimate is Î − ½ [b(d_x) + b(d_y) − b(d_x + d_y)] (``bias_correction``, default on;
the notes measured 8.25 ± 0.07 against a true 8.17 at d = 576 with it). This needs
N > d_x + d_y; project with PCA first otherwise (``pca_rank``, default 64, the setting that ranked
blocks best on SmolLM2-135M in the notes, Spearman 0.65). With PCA the estimate is the MI between the
two projections, a lower bound on the MI between the full states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from miprun.errors import MiprunError
from miprun.estimators.preprocess import (
    NORMALIZATIONS,
    as_bool,
    as_matrix,
    check_choice,
    copula_normal,
    normalize_tokens,
    optional_int,
    principal_components,
    require_samples,
)

# a canonical correlation is clamped so that 1 − ρ² ≥ this (caps one component at ≈ 13.8 nats)
_MIN_RESIDUAL = 1e-12


def wishart_logdet_bias(p: int, n: int) -> float:
    """b(p) = Σ_{i=1..p} [ψ((n − i)/2) + log(2/(n − 1))]: E[log det S] − log det Σ for the sample
    covariance S of n draws of a p-variate Gaussian (requires n > p)."""
    if p == 0:
        return 0.0
    if n <= p:
        raise ValueError(f"the Wishart correction needs n > p (n={n}, p={p})")
    i = torch.arange(1, p + 1, dtype=torch.float64)
    return float(torch.special.digamma((n - i) / 2.0).sum()) + p * math.log(2.0 / (n - 1))


@dataclass
class GaussianPrepared:
    """A variable's whitened principal coordinates (float64, n × r) and the rank r kept."""

    white: torch.Tensor

    @property
    def n(self) -> int:
        return self.white.shape[0]

    @property
    def rank(self) -> int:
        return self.white.shape[1]


class GaussianEstimator:
    """Gaussian log-det MI; see the module docstring for the formula and the bias correction.

    :param pca_rank: keep each variable's top principal components (None/0 = all; then N must
        exceed d_x + d_y).
    :param bias_correction: subtract the Wishart bias ½[b(d_x) + b(d_y) − b(d_x + d_y)].
    :param copula: rank-transform each coordinate to a standard normal first.
    :param normalize: token normalisation before PCA: ``none``, ``center``, ``standardize``, ``rms``
        (the log-det MI itself is invariant to per-feature affine maps; this changes which
        components PCA keeps).
    :param ridge: Σ + ridge·λ_max·I regularisation of each variable's covariance.
    """

    name = "gaussian"

    def __init__(
        self,
        *,
        pca_rank: int | None = 64,
        bias_correction: bool = True,
        copula: bool = False,
        normalize: str = "none",
        ridge: float = 1e-10,
    ) -> None:
        self.pca_rank = optional_int("pca_rank", pca_rank, "gaussian")
        self.bias_correction = as_bool("bias_correction", bias_correction, "gaussian")
        self.copula = as_bool("copula", copula, "gaussian")
        self.normalize = check_choice("normalize", normalize, NORMALIZATIONS, "gaussian")
        self.ridge = float(ridge)
        if not 0 <= self.ridge < 1:
            raise MiprunError(f"gaussian option ridge={ridge!r} must be in [0, 1) (1e-10 is typical)")
        self.min_samples = 8

    def _too_few(self, n: int, dims: int, what: str) -> MiprunError:
        fix = "raise --num-samples" + (" or lower pca_rank" if self.pca_rank else " or set pca_rank")
        return MiprunError(f"gaussian MI needs more samples than dimensions (n={n}, {what}={dims}); {fix}")

    def prepare(self, x: Any) -> GaussianPrepared:
        """Copula/normalise, project onto principal axes and whiten ``x`` (once per variable)."""
        t = as_matrix(x, "gaussian")
        n, d = t.shape
        require_samples(n, self.min_samples, "gaussian")
        if self.pca_rank is None and n <= d:
            raise self._too_few(n, d, "d")
        if self.copula:
            t = copula_normal(t)
        t = normalize_tokens(t, self.normalize)
        if self.pca_rank is None or d <= self.pca_rank:
            # no reduction: the MI is invariant to per-feature scale, so standardise for conditioning
            # (badly scaled features would otherwise fall under the eigenvalue floor and the ridge)
            t = normalize_tokens(t, "standardize")
        scores, variances = principal_components(t, self.pca_rank)
        if variances.numel() == 0:
            return GaussianPrepared(white=scores)
        white = scores / (variances + self.ridge * float(variances[0])).sqrt()
        return GaussianPrepared(white=white)

    def mi_prepared(self, px: GaussianPrepared, py: GaussianPrepared) -> float:
        """−½ Σ log(1 − ρ_i²) minus the Wishart bias (if enabled), in nats."""
        n = px.n
        if py.n != n:
            raise MiprunError(
                f"gaussian MI needs the same tokens for both variables, got n={n} and n={py.n}"
            )
        p, q = px.rank, py.rank
        if n <= p + q:
            raise self._too_few(n, p + q, "d_x+d_y")
        if p == 0 or q == 0:
            return 0.0
        cross = px.white.T @ py.white / (n - 1)
        rho2 = torch.linalg.svdvals(cross).pow(2)
        value = -0.5 * float(torch.log((1.0 - rho2).clamp_min(_MIN_RESIDUAL)).sum())
        if self.bias_correction:
            value -= 0.5 * (
                wishart_logdet_bias(p, n) + wishart_logdet_bias(q, n) - wishart_logdet_bias(p + q, n)
            )
        return value

    def mi(self, x: Any, y: Any) -> float:
        """Î between ``x`` (n × d_x) and ``y`` (n × d_y) in nats."""
        return self.mi_prepared(self.prepare(x), self.prepare(y))
