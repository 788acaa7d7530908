"""Kernel helpers for the matrix-based Rényi estimator and for neuron-level kernel widths.

Gaussian Gram matrix
    K_ij = exp(−‖x_i − x_j‖² / (2σ²)), built from squared distances computed on *centred* data with
    ‖a‖² + ‖b‖² − 2a·b (centring first keeps the cancellation small; the result is clamped at 0 and
    the diagonal set to exactly 0).

Kernel widths
    - ``median_width``: σ = median of the pairwise Euclidean distances (Gretton et al. 2008).
    - ``scott_width``: Scott's rule with the dimension correction,
      σ = γ · s · √d · N^(−1/(4+d)), where s = √(tr Σ / d) is the RMS per-feature standard deviation
      (s = 1 on standardised data, where this is the σ = γ√d N^(−1/(4+d)) of the notes). The plain
      rule σ = γ N^(−1/(4+d)) (Scott 1992; used by Yu et al. 2019) ignores that squared distances
      grow like 2·d·s²; at d = 576 its N factor is ≈ 0.99, the Gram matrix becomes the identity and
      every entropy equals log N. With the correction, σ² ≈ γ²·(mean squared distance)/2, close to
      the median heuristic.
    - ``aligned_width``: the σ that maximises the centred kernel alignment (Cristianini et al. 2002;
      Cortes, Mohri & Rostamizadeh 2012) between K_σ(x) and a target Gram matrix,
      A(K, T) = ⟨HKH, HTH⟩_F / (‖HKH‖_F ‖HTH‖_F), H = I − 11ᵀ/n,
      searched on a log-spaced grid around an initial width (e.g. Scott's) and refined by
      safeguarded parabolic interpolation (:func:`maximise_log_width`). Wickström et al. (2019)
      align a layer's kernel with the label kernel; Huang, Song & Pao's neuron pruning aligns each
      neuron's kernel with its layer's kernel. In both
      the per-batch optimum is smoothed over batches with an exponential moving average,
      σ_t = β σ_{t−1} + (1 − β) σ*_t — see :class:`WidthEMA`.

For scalar neurons pass ``x`` of shape (n,) or (n, 1) and the layer's Gram matrix as the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from miprun.linalg import double_center

_GOLDEN_STEP = (3.0 - math.sqrt(5.0)) / 2.0  # 0.382: the golden-section step into the larger side
_MAX_REFINEMENTS = 100  # a bound for pathological functions; a smooth maximum needs about 7


def _as_2d(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x).to(dtype=torch.float64)
    return t[:, None] if t.ndim == 1 else t


def pairwise_sq_dists(x: Any) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``x`` (n × d, or n), float64 (n × n).

    The data are centred first so the ‖a‖² + ‖b‖² − 2a·b expansion does not lose precision to a
    large common offset; negatives from rounding are clamped to 0 and the diagonal is exactly 0.
    """
    t = _as_2d(x)
    t = t - t.mean(dim=0, keepdim=True)
    sq = t.pow(2).sum(dim=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (t @ t.T)
    dist = 0.5 * (dist + dist.T)  # exact symmetry (the matmul is symmetric only to rounding)
    dist.clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    return dist


PRODUCT_FLOOR = torch.finfo(torch.float32).tiny ** 0.5
"""Kernel features (products of kernel values, :mod:`miprun.estimators.renyi_moments`) of magnitude
below this (about 1.1e-19) count as zero: a product of two of them is subnormal in float32, which
CPUs multiply and add about ten times slower (the order-2/3 features of a SmolLM2-135M layer:
1.42 s → 0.18 s for their products, bit-identical), for contributions far below float32's
resolution of the sums they enter."""


def without_tiny(features: torch.Tensor) -> torch.Tensor:
    """``features`` — never negative: products of kernel values — with the entries below
    :data:`PRODUCT_FLOOR` set to zero, in place (pass a tensor you own; it is returned)."""
    return features.masked_fill_(features < PRODUCT_FLOOR, 0.0)


def exp_without_subnormals(exponents: torch.Tensor) -> torch.Tensor:
    """``exp(exponents)`` computed in place (``exponents`` is overwritten and returned: pass a
    tensor you own), with every value up to four times the dtype's smallest normal number set to
    zero.

    A Gaussian kernel of a narrow width underflows for distant token pairs, and on CPU an
    exponential whose result is subnormal (or underflows to zero from a finite argument) takes a
    slow path: 15 ms against 0.24 ms for 1 536 × 496 float32 values here. The arguments are clamped
    where the result is still normal (twice the smallest) and every result up to four times the
    smallest normal is then zeroed — passes that never meet a subnormal, and in place, since the
    kernel-width search runs them about 230 times per layer on arrays of that size. A value below
    ~4.7e-38 (float32) changes no sum it enters unless that sum is itself of the order of 1e-30, and
    its square is zero either way."""
    tiny = torch.finfo(exponents.dtype).tiny
    values = exponents.clamp_min_(math.log(2.0 * tiny)).exp_()
    return torch.nn.functional.threshold(values, 4.0 * tiny, 0.0, inplace=True)


def gaussian_gram(sq_dists: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian Gram matrix exp(−D / (2σ²)) from squared distances ``D``."""
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"kernel width must be a positive finite number, got {sigma}")
    return torch.exp(sq_dists / (-2.0 * sigma * sigma))


def median_width(sq_dists: torch.Tensor) -> float:
    """Median heuristic: σ = median Euclidean distance over distinct pairs (lower median).

    Returns 1.0 if all points coincide (any width then gives the all-ones Gram matrix).
    """
    n = sq_dists.shape[0]
    if n < 2:
        return 1.0
    off_diagonal = n * (n - 1)
    # the n diagonal zeros are the n smallest entries, so skip past them
    kth = n + (off_diagonal + 1) // 2
    value = float(torch.kthvalue(sq_dists.reshape(-1), kth).values)
    return math.sqrt(value) if value > 0 else 1.0


def scott_width(x: Any, gamma: float = 0.8) -> float:
    """Scott's rule with the √d correction: σ = γ · √(tr Σ) · N^(−1/(4+d)) for data ``x`` (n × d).

    √(tr Σ) = s·√d with s the RMS per-feature standard deviation, so on standardised data this is
    γ √d N^(−1/(4+d)). Returns γ if the data are constant.
    """
    t = _as_2d(x)
    n, d = t.shape
    total_var = float(t.var(dim=0, unbiased=False).sum()) if n > 1 else 0.0
    scale = math.sqrt(total_var) if total_var > 0 else 1.0
    return gamma * scale * n ** (-1.0 / (4.0 + d))


def centered_alignment(k1: torch.Tensor, k2: torch.Tensor) -> float:
    """Centred kernel alignment ⟨HK₁H, HK₂H⟩_F / (‖HK₁H‖_F ‖HK₂H‖_F) of two n × n Gram matrices
    (1 for proportional centred kernels, 0 if either centred kernel vanishes)."""
    c1, c2 = double_center(k1.to(torch.float64)), double_center(k2.to(torch.float64))
    den = float(c1.norm() * c2.norm())
    return float((c1 * c2).sum()) / den if den > 0 else 0.0


def _centered_norm(k: torch.Tensor) -> float:
    """‖HKH‖_F for symmetric K without forming HKH: ‖K‖² − (2/n)‖K1‖² + (1ᵀK1/n)²."""
    n = k.shape[0]
    rows = k.sum(dim=1)
    value = float(k.pow(2).sum() - 2.0 / n * rows.pow(2).sum() + (rows.sum() / n) ** 2)
    return math.sqrt(max(value, 0.0))


def knn_graph(sq_dists: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetrised k-nearest-neighbour adjacency (1 if i is among j's k nearest or vice versa, 1 on
    the diagonal), float64 n × n: a target kernel that encodes local neighbourhoods only."""
    n = sq_dists.shape[0]
    k = max(1, min(int(k), n - 1))
    masked = sq_dists.clone()
    masked.fill_diagonal_(float("inf"))
    index = masked.topk(k, dim=1, largest=False).indices
    graph = torch.zeros_like(sq_dists)
    graph.scatter_(1, index, 1.0)
    graph = torch.maximum(graph, graph.T)
    graph.fill_diagonal_(1.0)
    return graph


def aligned_width(
    x: Any,
    target_gram: torch.Tensor,
    initial_sigma: float,
    *,
    span: float = 16.0,
    grid_points: int = 17,
    rel_tol: float = 1e-3,
    sq_dists: torch.Tensor | None = None,
) -> float:
    """Kernel width σ maximising the centred alignment between K_σ(x) and ``target_gram``.

    :param x: data (n × d, or n for a scalar neuron); ignored if ``sq_dists`` is given.
    :param target_gram: n × n target kernel over the same n samples (e.g. the layer's Gram matrix
        for a neuron, a label kernel, or :func:`knn_graph`).
    :param initial_sigma: centre of the search (e.g. :func:`scott_width`); the search covers
        [initial_sigma / span, initial_sigma · span] on a log scale.
    :param grid_points: points of the coarse log-spaced grid; the best grid point is then refined
        between its neighbours (:func:`maximise_log_width`) to a bracket of ``rel_tol`` in log σ.
    :param sq_dists: precomputed :func:`pairwise_sq_dists` of ``x``.
    :returns: the width; ``initial_sigma`` if every width gives zero alignment (e.g. constant data).
    """
    if not initial_sigma > 0:
        raise ValueError(f"initial_sigma must be positive, got {initial_sigma}")
    dist = pairwise_sq_dists(x) if sq_dists is None else sq_dists.to(torch.float64)
    target = double_center(target_gram.to(torch.float64))
    target_norm = float(target.norm())
    if target_norm == 0 or float(dist.max()) == 0:
        return float(initial_sigma)

    def score(log_sigma: float) -> float:
        gram = gaussian_gram(dist, math.exp(log_sigma))
        den = _centered_norm(gram) * target_norm
        return float((gram * target).sum()) / den if den > 0 else -1.0

    def values(log_sigma: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.tensor([score(float(v)) for v in log_sigma], dtype=torch.float64)

    centre = torch.tensor([math.log(initial_sigma)], dtype=torch.float64)
    log_sigma, best = maximise_log_width(values, centre, span=span, grid_points=grid_points, rel_tol=rel_tol)
    return math.exp(float(log_sigma[0])) if float(best[0]) > 0 else float(initial_sigma)


def maximise_log_width(
    evaluate: Any, centre: torch.Tensor, *, span: float, grid_points: int, rel_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of k searches at once, the log-width in [centre − ln span, centre + ln span] that
    maximises ``evaluate``, and the value there: a log-spaced grid of ``grid_points`` (at least 3),
    then, inside the best grid point's neighbours, successive parabolic interpolation through the
    best point and the bracket's ends (the vertex of the parabola, Brent's safeguards: at least
    ``rel_tol``/4 from every point already there, and a step shorter than half the one before the
    last; otherwise a golden-section step into the larger side of the bracket) until the bracket is
    at most ``rel_tol`` wide. The bracket always holds the best value found, as the golden-section
    search this replaced did; a smooth maximum needs about 7 evaluations after the grid instead of 12.

    :param evaluate: ``evaluate(log_sigma (j,), rows (j,))`` → (j,) float64 values of searches
        ``rows`` at ``log_sigma`` (only the searches still refining are asked).
    :param centre: (k,) float64 log-widths the grid is centred on.
    :returns: ((k,) log-widths, (k,) their values).
    """
    offsets = torch.linspace(-math.log(span), math.log(span), max(int(grid_points), 3), dtype=torch.float64)
    grid = centre[:, None] + offsets[None, :]
    every = torch.arange(len(centre))
    values = torch.stack([evaluate(grid[:, g], every) for g in range(grid.shape[1])], dim=1)
    best = values.argmax(dim=1)
    b, fb = grid[every, best], values[every, best]
    left, right = (best - 1).clamp_min(0), (best + 1).clamp_max(grid.shape[1] - 1)
    a, fa, c, fc = grid[every, left], values[every, left], grid[every, right], values[every, right]
    before_last = torch.full_like(b, math.inf)  # length of the step before the last (Brent's test)
    last = torch.full_like(b, math.inf)
    tol = rel_tol / 4.0
    active = (fb > 0) & (c - a > rel_tol)
    for _ in range(_MAX_REFINEMENTS):
        if not bool(active.any()):
            break
        rows = active.nonzero().flatten()
        A, B, C, FA, FB, FC = a[rows], b[rows], c[rows], fa[rows], fb[rows], fc[rows]
        p = (B - A).pow(2) * (FB - FC) - (B - C).pow(2) * (FB - FA)
        q = 2.0 * ((B - A) * (FB - FC) - (B - C) * (FB - FA))
        vertex = B - p / torch.where(q != 0, q, torch.ones_like(q))
        parabolic = ((q != 0) & (vertex > A + tol) & (vertex < C - tol) & ((vertex - B).abs() >= tol)
                     & ((vertex - B).abs() < 0.5 * before_last[rows]))
        golden = torch.where(C - B >= B - A, B + _GOLDEN_STEP * (C - B), B - _GOLDEN_STEP * (B - A))
        u = torch.where(parabolic, vertex, golden)
        fu = evaluate(u, rows)
        better, below = fu > FB, u < B
        a[rows] = torch.where(better, torch.where(below, A, B), torch.where(below, u, A))
        fa[rows] = torch.where(better, torch.where(below, FA, FB), torch.where(below, fu, FA))
        c[rows] = torch.where(better, torch.where(below, B, C), torch.where(below, C, u))
        fc[rows] = torch.where(better, torch.where(below, FB, FC), torch.where(below, FC, fu))
        b[rows], fb[rows] = torch.where(better, u, B), torch.where(better, fu, FB)
        before_last[rows], last[rows] = last[rows], (u - B).abs()
        active[rows] = c[rows] - a[rows] > rel_tol
    return b, fb


@dataclass
class WidthEMA:
    """Exponential moving average of kernel widths over batches:
    σ_t = β σ_{t−1} + (1 − β) σ*_t, starting from the first value (Wickström et al. 2019;
    Huang, Song & Pao).

    Use one instance per variable (per layer, or per neuron) and call :meth:`update` with each
    batch's optimal width; :attr:`value` is the smoothed width (None before the first update).
    """

    beta: float = 0.9
    value: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"EMA factor beta must be in [0, 1), got {self.beta}")

    def update(self, sigma: float) -> float:
        """Fold in one batch's width and return the smoothed width."""
        sigma = float(sigma)
        self.value = sigma if self.value is None else self.beta * self.value + (1.0 - self.beta) * sigma
        return self.value


EMA_TAIL = 1e-3
"""Largest share of an EMA's spread that the values :func:`ema_horizon` leaves out may move it by:
a tenth of a percent of the widths' spread over batches, well below the 1 % to which the alignment
search resolves each batch's width."""


def ema_horizon(beta: float, count: int, tail: float = EMA_TAIL) -> int:
    """How many of ``count`` values, the last ones, an EMA with factor β needs.

    After the last ``L`` values the EMA state before them carries the weight β^(L−1) (the rest goes
    to the last L − 1 values), and that state is a weighted mean of the earlier values. Starting
    the EMA at the first kept value instead puts the same weight on one value, so the result moves
    by at most β^(L−1) times the values' spread: ``L`` is the smallest count with β^(L−1) ≤ ``tail``
    (11 at β = 0.5 and the default 10⁻³; 1 at β = 0)."""
    if count <= 1 or beta <= 0.0:
        return min(count, 1)
    return min(count, 1 + math.ceil(math.log(tail) / math.log(beta) - 1e-9))
