"""Shared machinery of the neuron-level (pairwise) estimators: widths for scalar neurons, batched
matrix-based Rényi entropies, and the all-pairs loop.

A *pairwise estimator* (``granularity = "neuron"``) has one method the ``neuron-mi`` scorer calls
per FFN layer::

    pairwise(acts: (tokens × neurons) tensor, *, info: dict | None = None) -> (neurons × neurons) tensor

returning a symmetric float32 matrix of dependence between every pair of neurons (higher = more
redundant; MI in nats for the MI estimators), and filling ``info`` with what it chose (widths, token
batches). The built-in ones also follow the :class:`~miprun.contracts.Estimator` protocol for two
*scalar* variables (:class:`ScalarPairMixin`): ``mi(x, y)`` is one entry of ``pairwise``.

Vectorised kernel alignment
    :func:`aligned_widths` is :func:`miprun.estimators.kernels.aligned_width` run for many scalar
    neurons at once against one target Gram matrix: the same log-spaced grid around each neuron's
    initial width, the same refinement between the best grid point's neighbours
    (:func:`~miprun.estimators.kernels.maximise_log_width`, which both call), and
    the same centred alignment A(K, T) = ⟨K, HTH⟩_F / (‖HKH‖_F ‖HTH‖_F) (⟨HKH, HTH⟩ = ⟨K, HTH⟩
    because H is idempotent; ‖HKH‖²_F = ‖K‖² − (2/n)‖K1‖² + (1ᵀK1/n)² for symmetric K), evaluated
    for a chunk of neurons in one tensor operation instead of one Python call per neuron.

Batched Rényi entropy
    :func:`renyi_entropies` takes a stack of unnormalised Gram matrices (P × n × n), normalises each
    by its trace and returns S_α for all of them from one batched ``eigvalsh`` (α = 1: von Neumann).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from miprun.estimators import kernels
from miprun.estimators.renyi_moments import spectrum_entropies

CHUNK_BYTES = 64 * 2**20


class ScalarPairMixin:
    """``prepare`` / ``mi_prepared`` / ``mi`` for two scalar neurons, from ``pairwise`` on the pair
    (so a neuron estimator also satisfies :class:`miprun.contracts.Estimator`)."""

    def prepare(self, x: Any) -> torch.Tensor:
        """One neuron's activations as a (tokens,) float64 tensor; more than one column is an error."""
        from miprun.errors import MiprunError

        t = torch.as_tensor(x).detach().to("cpu", torch.float64)
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim != 1:
            raise MiprunError(
                f"{getattr(self, 'name', 'this estimator')} measures scalar neurons, got shape {tuple(t.shape)}; "
                f"use a block estimator (renyi, gaussian, ksg) for vectors"
            )
        return t

    def mi_prepared(self, px: torch.Tensor, py: torch.Tensor) -> float:
        """The dependence between two prepared neurons (an off-diagonal entry of ``pairwise``)."""
        return float(self.pairwise(torch.stack([px, py], dim=1))[0, 1])  # type: ignore[attr-defined]

    def mi(self, x: Any, y: Any) -> float:
        """The dependence between two neurons given as (tokens,) or (tokens × 1) arrays."""
        return self.mi_prepared(self.prepare(x), self.prepare(y))


def scalar_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Squared distances between the tokens of every neuron: (m, n, n) from ``x`` (n × m)."""
    t = x.T.contiguous()
    return (t[:, :, None] - t[:, None, :]).pow_(2)


def scott_widths(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Scott's rule for every scalar neuron of ``x`` (n × m): σ_i = γ · std_i · n^(−1/5) (the d = 1
    case of :func:`miprun.estimators.kernels.scott_width`; γ for a constant neuron)."""
    n = x.shape[0]
    std = x.to(torch.float64).var(dim=0, unbiased=False).sqrt() if n > 1 else torch.zeros(x.shape[1], dtype=torch.float64)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return gamma * std * n ** (-1.0 / 5.0)


ALIGNMENTS = ("unbiased", "centred")


class _Target:
    """A target Gram matrix prepared for :func:`_alignment`. A Gaussian kernel is symmetric with a
    unit diagonal, so the alignment needs only its n(n−1)/2 entries above the diagonal (half the
    exponentials): one matrix product with ``reducer`` (pairs × (1 + n)) gives ⟨K, target⟩ over
    those pairs (both triangles) and the n off-diagonal row sums of every K."""

    def __init__(self, target: torch.Tensor, mode: str, dtype: torch.dtype) -> None:
        t = target.to(torch.float64)
        n = t.shape[0]
        self.n, self.mode = n, mode
        a, b = torch.triu_indices(n, n, offset=1)
        self.pairs = (a, b)
        if mode == "centred":
            centred = t - t.mean(dim=0, keepdim=True) - t.mean(dim=1, keepdim=True) + t.mean()
            upper = centred[a, b]
            self.diagonal = float(centred.diagonal().sum())  # ⟨K, target⟩ on the diagonal, where K is 1
            self.norm = float(centred.norm())
        else:
            off = t.clone()
            off.fill_diagonal_(0.0)
            upper = off[a, b]
            self.total = float(off.sum())
            self.rows = off.sum(dim=1)
            self.hsic = _hsic_u(float(off.pow(2).sum()), self.total, self.total, float(self.rows @ self.rows), n)
            self.norm = math.sqrt(self.hsic) if self.hsic > 0 else 0.0
        incidence = torch.zeros(len(a), n, dtype=dtype)
        pair = torch.arange(len(a))
        incidence[pair, a] = 1.0
        incidence[pair, b] = 1.0
        self.reducer = torch.cat([2.0 * upper[:, None].to(dtype), incidence], dim=1)


def _hsic_u(inner: Any, total_k: Any, total_l: Any, rows_dot: Any, n: int) -> Any:
    """n(n−3) · unbiased HSIC (Song et al. 2012) of zero-diagonal kernels from their sums."""
    return inner + total_k * total_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows_dot


def _alignment(dist: torch.Tensor, log_sigma: torch.Tensor, target: _Target) -> torch.Tensor:
    """Alignment of K_σ (one σ per neuron; ``dist`` = C × n(n−1)/2 squared distances of the token
    pairs above the diagonal) with the target: centred (Cristianini et al.; as
    :func:`~miprun.estimators.kernels.centered_alignment`) or unbiased (the diagonal of both kernels
    excluded; see :func:`aligned_widths`)."""
    n = target.n
    scale = (-0.5 * torch.exp(-2.0 * log_sigma)).to(dist.dtype)[:, None]
    gram = kernels.exp_without_subnormals(dist * scale)
    reduced = (gram @ target.reducer).to(torch.float64)
    inner, rows = reduced[:, 0], reduced[:, 1:]  # off the diagonal, where K is exactly 1
    sq = 2.0 * torch.linalg.vector_norm(gram, dim=1).to(torch.float64).pow(2)
    if target.mode == "centred":
        inner, rows, sq = inner + target.diagonal, rows + 1.0, sq + n
        norm2 = sq - 2.0 / n * rows.pow(2).sum(dim=-1) + (rows.sum(dim=-1) / n).pow(2)
    else:
        total = rows.sum(dim=-1)
        inner = _hsic_u(inner, total, target.total, rows @ target.rows, n)
        norm2 = _hsic_u(sq, total, total, rows.pow(2).sum(dim=-1), n)
    den = norm2.clamp_min(0.0).sqrt() * target.norm
    return torch.where((den > 0) & (norm2 > 0), inner / den.clamp_min(1e-300), torch.full_like(inner, -1.0))


def _spread(values: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` at ``rows`` of a vector of ``size`` (a neutral log-width, 0, elsewhere)."""
    out = torch.zeros(size, dtype=values.dtype)
    out[rows] = values
    return out


def aligned_widths(
    x: torch.Tensor,
    target_gram: torch.Tensor,
    initial: torch.Tensor,
    *,
    span: float = 16.0,
    grid_points: int = 17,
    rel_tol: float = 1e-3,
    alignment: str = "centred",
    chunk: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Per-neuron widths maximising the alignment between each neuron's Gaussian kernel and
    ``target_gram`` (e.g. the layer's kernel), searched on [σ₀/span, σ₀·span] around ``initial``.

    :param x: data (n × m), one column per scalar neuron.
    :param target_gram: n × n target kernel over the same tokens.
    :param initial: (m,) starting widths σ₀ (e.g. :func:`scott_widths`).
    :param alignment: ``centred`` — A(K, T) = ⟨HKH, HTH⟩/(‖HKH‖‖HTH‖), exactly what
        :func:`miprun.estimators.kernels.aligned_width` maximises; ``unbiased`` — the same with the
        unbiased HSIC U-statistic of Song et al. (2012) in place of ⟨HKH, HTH⟩, which leaves out the
        diagonals. A Gaussian kernel's diagonal is 1 whatever the width, and on a small token batch
        it dominates the centred layer kernel, so the centred alignment always prefers the smallest
        width (or, with the diagonal simply zeroed, rejects every width); the unbiased form does not.
    :param dtype: precision of the kernels (float32 halves the time; sums are taken in float64).
    :returns: (m,) float64 widths; σ₀ where no width aligns positively (e.g. a constant neuron).
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    x = x.to(torch.float64)
    n, m = x.shape
    initial = initial.to(torch.float64)
    if n < 4 or float(target_gram.abs().sum()) == 0:
        return initial.clone()
    target = _Target(target_gram, alignment, dtype)
    if target.norm == 0:
        return initial.clone()
    chunk = chunk or max(1, CHUNK_BYTES // (4 * n * n * 3))
    out = initial.clone()
    a, b = target.pairs
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        xt = x[:, start:stop].T.contiguous()  # neurons × tokens: the pairs' columns gathered in place, no transpose
        dist = torch.index_select(xt, 1, a).sub_(torch.index_select(xt, 1, b)).pow_(2).to(dtype)

        def evaluate(log_sigma: torch.Tensor, rows: torch.Tensor, dist: torch.Tensor = dist) -> torch.Tensor:
            if 2 * len(rows) > len(dist):  # most still searching: evaluating all costs less than gathering them
                return _alignment(dist, _spread(log_sigma, rows, len(dist)), target)[rows]
            return _alignment(dist[rows], log_sigma, target)

        log_sigma, best = kernels.maximise_log_width(evaluate, initial[start:stop].log(), span=span,
                                                     grid_points=grid_points, rel_tol=rel_tol)
        out[start:stop] = torch.where(best > 0, log_sigma.exp(), initial[start:stop])
    return out


def renyi_entropies(grams: torch.Tensor, alpha: float) -> torch.Tensor:
    """S_α(G / tr G) in nats for a stack of PSD matrices (P × n × n), from one batched eigvalsh."""
    return spectrum_entropies(normalised_spectra(grams), alpha)


def normalised_spectra(grams: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of G / tr G (float64, clamped at 0) for a stack of PSD matrices (P × n × n)."""
    lam = torch.linalg.eigvalsh(grams).clamp_min(0.0).to(torch.float64)
    total = lam.sum(dim=-1, keepdim=True)
    return lam / torch.where(total > 0, total, torch.ones_like(total))


def upper_pairs(m: int, max_pairs: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All pairs i < j of ``m`` neurons in chunks of at most ``max_pairs`` (row blocks, so the index
    arrays never hold all m(m−1)/2 pairs of an 11 008-wide layer at once)."""
    rows: list[torch.Tensor] = []
    cols: list[torch.Tensor] = []
    held = 0
    for i in range(m - 1):
        j = torch.arange(i + 1, m)
        rows.append(torch.full_like(j, i))
        cols.append(j)
        held += len(j)
        if held >= max_pairs:
            a, b = torch.cat(rows), torch.cat(cols)
            for s in range(0, len(a), max_pairs):
                yield a[s : s + max_pairs], b[s : s + max_pairs]
            rows, cols, held = [], [], 0
    if rows:
        a, b = torch.cat(rows), torch.cat(cols)
        for s in range(0, len(a), max_pairs):
            yield a[s : s + max_pairs], b[s : s + max_pairs]


def parallel_map(function: Any, items: list[Any], workers: int) -> list[Any]:
    """``[function(item) for item in items]`` on ``workers`` threads (torch releases the GIL in its
    kernels, so batched LAPACK calls on different chunks run in parallel)."""
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))
