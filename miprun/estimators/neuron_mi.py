"""Shared machinery of the neuron-level (pairwise) estimators: widths for scalar neurons, batched
matrix-based Rényi entropies, and the all-pairs loop.

A *pairwise estimator* (``granularity = "neuron"``) has one method the ``neuron-mi`` scorer calls
per FFN layer::

    pairwise(acts: (tokens × neurons) tensor, *, info: dict | None = None) -> (neurons × neurons) tensor

returning a symmetric float32 matrix of dependence between every pair of neurons (higher = more
redundant; MI in nats for the MI estimators), and filling ``info`` with what it chose (widths, token
batches). The block-level protocol (``prepare`` / ``mi_prepared`` / ``mi``) is not required.

Vectorised kernel alignment
    :func:`aligned_widths` is :func:`miprun.estimators.kernels.aligned_width` run for many scalar
    neurons at once against one target Gram matrix: the same log-spaced grid around each neuron's
    initial width, the same golden-section refinement between the best grid point's neighbours, and
    the same centred alignment A(K, T) = ⟨K, HTH⟩_F / (‖HKH‖_F ‖HTH‖_F) (⟨HKH, HTH⟩ = ⟨K, HTH⟩
    because H is idempotent; ‖HKH‖²_F = ‖K‖² − (2/n)‖K1‖² + (1ᵀK1/n)² for symmetric K), evaluated
    for a chunk of neurons in one tensor operation instead of one Python call per neuron.

Batched Rényi entropy
    :func:`renyi_entropies` takes a stack of unnormalised Gram matrices (P × n × n), normalises each
    by its trace and returns S_α for all of them from one batched ``eigvalsh`` (α = 1: von Neumann).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import torch

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
CHUNK_BYTES = 64 * 2**20


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


def _centered_norms(k: torch.Tensor) -> torch.Tensor:
    """‖HKH‖_F for a stack of symmetric matrices (C × n × n)."""
    n = k.shape[-1]
    rows = k.sum(dim=-1)
    value = k.pow(2).sum(dim=(-2, -1)) - 2.0 / n * rows.pow(2).sum(dim=-1) + (rows.sum(dim=-1) / n).pow(2)
    return value.clamp_min(0.0).sqrt()


def _alignment(dist: torch.Tensor, log_sigma: torch.Tensor, target_c: torch.Tensor, target_norm: float) -> torch.Tensor:
    """Centred alignment of K_σ (one σ per neuron) with the centred target, for a chunk of neurons."""
    sigma2 = torch.exp(2.0 * log_sigma)[:, None, None]
    gram = torch.exp(dist / (-2.0 * sigma2))
    den = _centered_norms(gram) * target_norm
    num = (gram * target_c).sum(dim=(-2, -1))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, -1.0))


def aligned_widths(
    x: torch.Tensor,
    target_gram: torch.Tensor,
    initial: torch.Tensor,
    *,
    span: float = 16.0,
    grid_points: int = 17,
    rel_tol: float = 1e-3,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-neuron widths maximising the centred alignment between each neuron's Gaussian kernel and
    ``target_gram`` (e.g. the layer's kernel), searched on [σ₀/span, σ₀·span] around ``initial``.

    :param x: data (n × m), one column per scalar neuron.
    :param target_gram: n × n target kernel over the same tokens.
    :param initial: (m,) starting widths σ₀ (e.g. :func:`scott_widths`).
    :returns: (m,) float64 widths; σ₀ where no width aligns positively (e.g. a constant neuron).
    """
    x = x.to(torch.float64)
    n, m = x.shape
    target = target_gram.to(torch.float64)
    target_c = target - target.mean(dim=0, keepdim=True) - target.mean(dim=1, keepdim=True) + target.mean()
    target_norm = float(target_c.norm())
    initial = initial.to(torch.float64)
    if target_norm == 0 or n < 2:
        return initial.clone()
    chunk = chunk or max(1, CHUNK_BYTES // (8 * n * n * 3))
    out = initial.clone()
    half = math.log(span)
    offsets = torch.linspace(-half, half, max(int(grid_points), 3), dtype=torch.float64)
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        dist = scalar_sq_dists(x[:, start:stop])
        centre = initial[start:stop].log()
        grid = centre[:, None] + offsets[None, :]
        values = torch.stack([_alignment(dist, grid[:, g], target_c, target_norm) for g in range(grid.shape[1])], dim=1)
        best = values.argmax(dim=1)
        rows = torch.arange(stop - start)
        best_value = values[rows, best]
        lo = grid[rows, (best - 1).clamp_min(0)]
        hi = grid[rows, (best + 1).clamp_max(grid.shape[1] - 1)]
        a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
        fa, fb = _alignment(dist, a, target_c, target_norm), _alignment(dist, b, target_c, target_norm)
        while bool(((hi - lo) > rel_tol).any()):
            active = (hi - lo) > rel_tol
            left = fa >= fb  # the maximum lies in [lo, b]
            new_hi = torch.where(left, b, hi)
            new_lo = torch.where(left, lo, a)
            new_a = torch.where(left, new_hi - _GOLDEN * (new_hi - new_lo), b)
            new_b = torch.where(left, a, new_lo + _GOLDEN * (new_hi - new_lo))
            probe = torch.where(left, new_a, new_b)
            f_probe = _alignment(dist, probe, target_c, target_norm)
            new_fa = torch.where(left, f_probe, fb)
            new_fb = torch.where(left, fa, f_probe)
            lo, hi = torch.where(active, new_lo, lo), torch.where(active, new_hi, hi)
            a, b = torch.where(active, new_a, a), torch.where(active, new_b, b)
            fa, fb = torch.where(active, new_fa, fa), torch.where(active, new_fb, fb)
        candidates = torch.stack([best_value, fa, fb], dim=1)
        points = torch.stack([grid[rows, best], a, b], dim=1)
        pick = candidates.argmax(dim=1)
        chosen = points[rows, pick].exp()
        out[start:stop] = torch.where(best_value > 0, chosen, initial[start:stop])
    return out


def renyi_entropies(grams: torch.Tensor, alpha: float) -> torch.Tensor:
    """S_α(G / tr G) in nats for a stack of PSD matrices (P × n × n), from one batched eigvalsh."""
    lam = torch.linalg.eigvalsh(grams).clamp_min(0.0).to(torch.float64)
    total = lam.sum(dim=-1, keepdim=True)
    lam = lam / torch.where(total > 0, total, torch.ones_like(total))
    if alpha == 1.0:
        safe = torch.where(lam > 0, lam, torch.ones_like(lam))
        return -(lam * safe.log()).sum(dim=-1)
    powered = torch.where(lam > 0, lam, torch.zeros_like(lam)).pow(alpha).sum(dim=-1)
    return powered.log() / (1.0 - alpha)


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
