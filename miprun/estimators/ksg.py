"""Kraskov–Stögbauer–Grassberger k-nearest-neighbour MI, algorithm 1 (Kraskov, Stögbauer &
Grassberger 2004, Phys. Rev. E 69, 066138).

For each sample i let ε_i be the distance to its k-th nearest neighbour in the joint space
z = (x, y) under the max-norm ‖z − z'‖ = max(‖x − x'‖_∞, ‖y − y'‖_∞), and let n_x(i), n_y(i) count
the other samples strictly closer than ε_i in the marginal spaces. Then

    Î(X; Y) = ψ(k) + ψ(N) − ⟨ψ(n_x + 1) + ψ(n_y + 1)⟩,

with ψ the digamma function and ⟨·⟩ the mean over samples. The estimate can be slightly negative
for independent variables; it is returned as is.

KSG is accurate only in low dimension (the notes measure a true MI of 1.02 estimated 1.02 at d = 2,
0.73 at d = 5, 0.20 at d = 25). High-dimensional hidden states are therefore reduced first
(``reduce="pca"`` by default, ``dim`` = 8 coordinates per variable; a variable with at most ``dim``
features is left as is), which estimates the MI between the projections — a lower bound on the MI
of the full states by the data-processing inequality. Max-norm neighbourhoods are not scale
invariant, so with ``standardize`` each coordinate of an unreduced variable is scaled to unit
variance (as Kraskov et al. recommend), while a reduced variable gets one common scale so that its
projected axes keep their relative variance (standardising each principal component would blow weak
noise directions up to the weight of the signal: 3 informative directions in 40 features, reduced
to 8 PCs, gave 0.77 nats of a true 2.49 with per-component scaling, 2.13 with one scale). The
price is that one dominant axis (a massive-activation channel) would set the max-norm alone, so
tokens are normalised per feature (``normalize="standardize"``, default) before the projection.
A tiny deterministic jitter (``jitter`` × unit variance, seeded) breaks ties from
repeated tokens, which would otherwise give ε_i = 0.

Distances are brute force in float64, in row chunks so that no temporary exceeds ``chunk_mb``
megabytes (brute force beats KD-trees above ~15 dimensions, and chunking keeps memory bounded at
n = 4096). Cost per MI is O(N² (d_x + d_y)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from miprun.errors import MiprunError
from miprun.estimators.preprocess import (
    NORMALIZATIONS,
    REDUCTIONS,
    as_bool,
    as_matrix,
    check_choice,
    normalize_tokens,
    reduce_dim,
    require_samples,
)


@dataclass
class KSGPrepared:
    """A variable's reduced, standardised, jittered points (float64, n × d')."""

    points: torch.Tensor

    @property
    def n(self) -> int:
        return self.points.shape[0]


def _chebyshev_rows(points: torch.Tensor, rows: slice) -> torch.Tensor:
    """Max-norm distances from ``points[rows]`` to all points (rows × n), one feature at a time so
    the only temporary is one rows × n matrix (much faster than a rows × n × d broadcast)."""
    block = points[rows]
    out = torch.zeros(block.shape[0], points.shape[0], dtype=points.dtype)
    for f in range(points.shape[1]):
        torch.maximum(out, (block[:, f, None] - points[None, :, f]).abs_(), out=out)
    return out


class KSGEstimator:
    """KSG algorithm 1 mutual information; see the module docstring.

    :param k: neighbours in the joint space (3 is the usual bias/variance compromise).
    :param reduce: dimension reduction per variable before estimation: ``pca``, ``random``, ``none``.
    :param dim: coordinates kept per variable when reducing.
    :param seed: seed of the random projection and of the jitter.
    :param normalize: token normalisation before reduction: ``none``, ``center``, ``standardize``, ``rms``.
    :param standardize: scale each coordinate to unit variance (a reduced variable: one common scale).
    :param jitter: amplitude of the deterministic tie-breaking noise, relative to unit variance
        (0 disables it).
    :param chunk_mb: memory bound for one chunk of brute-force distances, in megabytes.
    """

    name = "ksg"

    def __init__(
        self,
        *,
        k: int = 3,
        reduce: str = "pca",
        dim: int = 8,
        seed: int = 0,
        normalize: str = "standardize",
        standardize: bool = True,
        jitter: float = 1e-10,
        chunk_mb: float = 64.0,
    ) -> None:
        self.k = int(k)
        if self.k < 1:
            raise MiprunError(f"ksg option k={k!r} must be at least 1 (3 is typical)")
        self.reduce = check_choice("reduce", reduce, REDUCTIONS, "ksg")
        self.dim = int(dim)
        if self.dim < 1:
            raise MiprunError(f"ksg option dim={dim!r} must be at least 1 (8 is typical)")
        self.seed = int(seed)
        self.normalize = check_choice("normalize", normalize, NORMALIZATIONS, "ksg")
        self.standardize = as_bool("standardize", standardize, "ksg")
        self.jitter = float(jitter)
        if self.jitter < 0:
            raise MiprunError(f"ksg option jitter={jitter!r} must be ≥ 0")
        self.chunk_bytes = max(int(float(chunk_mb) * 2**20), 1)
        self.min_samples = max(10, 2 * (self.k + 1))

    def prepare(self, x: Any) -> KSGPrepared:
        """Normalise, reduce, standardise and jitter ``x`` (once per variable)."""
        t = as_matrix(x, "ksg")
        require_samples(t.shape[0], self.min_samples, "ksg")
        x_dim = t.shape[1]
        t = reduce_dim(normalize_tokens(t, self.normalize), self.reduce, self.dim, self.seed)
        t = t - t.mean(dim=0, keepdim=True)
        if self.standardize:
            reduced = self.reduce != "none" and x_dim > self.dim
            std = t.std(dim=0, keepdim=True)
            if reduced:  # one scale: keep the relative variance of the projected axes
                std = std.pow(2).mean().sqrt().expand_as(std)
            t = t / torch.where(std > 0, std, torch.ones_like(std))
        if self.jitter > 0:
            generator = torch.Generator().manual_seed(self.seed + 1)
            t = t + self.jitter * torch.randn(t.shape, generator=generator, dtype=torch.float64)
        return KSGPrepared(points=t.contiguous())

    def mi_prepared(self, px: KSGPrepared, py: KSGPrepared) -> float:
        """Î = ψ(k) + ψ(N) − ⟨ψ(n_x + 1) + ψ(n_y + 1)⟩ in nats."""
        n = px.n
        if py.n != n:
            raise MiprunError(f"ksg MI needs the same tokens for both variables, got n={n} and n={py.n}")
        require_samples(n, self.min_samples, "ksg")
        # float64 temporaries per row: distances in x, y and the joint space, one difference row,
        # and the comparison masks
        rows = max(1, min(n, self.chunk_bytes // (8 * n * 5)))
        total = 0.0
        for start in range(0, n, rows):
            sl = slice(start, min(start + rows, n))
            dist_x = _chebyshev_rows(px.points, sl)
            dist_y = _chebyshev_rows(py.points, sl)
            self_index = torch.arange(sl.start, sl.stop)
            local = torch.arange(sl.stop - sl.start)
            joint = torch.maximum(dist_x, dist_y)
            joint[local, self_index] = float("inf")
            eps = joint.topk(self.k, dim=1, largest=False).values[:, -1]
            dist_x[local, self_index] = float("inf")
            dist_y[local, self_index] = float("inf")
            n_x = (dist_x < eps[:, None]).sum(dim=1)
            n_y = (dist_y < eps[:, None]).sum(dim=1)
            counts = torch.cat([n_x, n_y]).to(torch.float64) + 1.0
            total += float(torch.special.digamma(counts).sum())
        psi = torch.special.digamma(torch.tensor([float(self.k), float(n)], dtype=torch.float64))
        return float(psi.sum()) - total / n

    def mi(self, x: Any, y: Any) -> float:
        """Î between ``x`` (n × d_x) and ``y`` (n × d_y) in nats."""
        return self.mi_prepared(self.prepare(x), self.prepare(y))

