"""Preprocessing shared by the MI estimators: input checks, token normalisation, deterministic
subsampling, the Gaussian-copula transform and dimension reduction (PCA, random projection).

All functions take and return float64 CPU tensors of shape (n tokens, d features); a 1-D input is
treated as one feature.

Token normalisation (``normalize_tokens``):

- ``none``: the data as given;
- ``center``: subtract the per-feature mean;
- ``standardize``: per-feature z-score, x_j ← (x_j − mean_j) / std_j (constant features become 0).
  Tames the massive-activation channels of LLM hidden states, which otherwise dominate distances;
- ``rms``: per-token RMS normalisation, x_t ← x_t / sqrt(mean_j x_tj²) as in RMSNorm without a
  weight (this discards each token's norm, so it changes the information content).

Dimension reduction: ``principal_components`` projects onto the top-r eigenvectors of the sample
covariance (Pearson 1901; Hotelling 1933), diagonalising the d × d covariance when n ≥ d and the n × n
Gram matrix otherwise; ``random_projection`` multiplies by a seeded Gaussian matrix scaled by 1/√r
(Johnson & Lindenstrauss 1984), which preserves distances in expectation.

Gaussian copula (``copula_normal``): each coordinate is replaced by Φ⁻¹(rank / (n + 1)), with average
ranks for ties, so the result depends on the data only through per-coordinate ranks and is unchanged
by any strictly increasing per-coordinate map.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from miprun.errors import MiprunError, did_you_mean

NORMALIZATIONS = ("none", "center", "standardize", "rms")
REDUCTIONS = ("none", "pca", "random")


def check_choice(option: str, value: Any, choices: tuple[str, ...], owner: str) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``, else raise a one-line MiprunError."""
    text = str(value).strip().lower()
    if text not in choices:
        raise MiprunError(
            f"{owner} option {option}={value!r} is not valid{did_you_mean(text, list(choices))}; "
            f"choose one of: {', '.join(choices)}"
        )
    return text


def as_bool(option: str, value: Any, owner: str) -> bool:
    """Parse a boolean option given as a bool or as true/false/yes/no/on/off/1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise MiprunError(f"{owner} option {option}={value!r} must be true or false")


def optional_int(option: str, value: Any, owner: str) -> int | None:
    """Parse an optional positive int option: ``None``, ``0``, ``"none"`` and ``""`` mean unset."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise MiprunError(f"{owner} option {option}={value!r} must be a whole number or 'none'") from None
    if number < 0:
        raise MiprunError(f"{owner} option {option}={value!r} must be positive (or 0/'none' to disable)")
    return number or None


def as_matrix(x: Any, owner: str) -> torch.Tensor:
    """Return ``x`` as a finite float64 (n, d) tensor; a 1-D input becomes one column."""
    t = torch.as_tensor(x)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise MiprunError(f"{owner} expects a (tokens × features) matrix, got shape {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise MiprunError(f"{owner} input contains NaN or inf; check the collected hidden states")
    return t


def require_samples(n: int, min_samples: int, owner: str) -> None:
    """Raise a MiprunError naming the fix if ``n < min_samples``."""
    if n < min_samples:
        raise MiprunError(
            f"{owner} MI needs at least {min_samples} samples, got n={n}; raise --num-samples"
        )


def subsample_rows(x: torch.Tensor, max_samples: int | None) -> torch.Tensor:
    """Keep at most ``max_samples`` rows, evenly spaced, so every variable with the same n keeps the
    same token positions (deterministic, no random state)."""
    n = x.shape[0]
    if max_samples is None or n <= max_samples:
        return x
    index = torch.div(torch.arange(max_samples) * n, max_samples, rounding_mode="floor")
    return x[index]


def normalize_tokens(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply one of :data:`NORMALIZATIONS` (see the module docstring) to a float64 (n, d) tensor."""
    if mode == "none":
        return x
    if mode == "center":
        return x - x.mean(dim=0, keepdim=True)
    if mode == "standardize":
        centred = x - x.mean(dim=0, keepdim=True)
        std = centred.pow(2).mean(dim=0, keepdim=True).sqrt()
        scale = torch.where(std > 0, std, torch.ones_like(std))
        return centred / scale
    if mode == "rms":
        rms = x.pow(2).mean(dim=1, keepdim=True).sqrt()
        return x / torch.where(rms > 0, rms, torch.ones_like(rms))
    raise ValueError(f"unknown normalisation {mode!r}")


def copula_normal(x: torch.Tensor) -> torch.Tensor:
    """Per-coordinate Gaussian-copula transform Φ⁻¹(rank / (n + 1)) with average ranks for ties."""
    from scipy.stats import rankdata

    n = x.shape[0]
    ranks = torch.from_numpy(rankdata(x.numpy(), method="average", axis=0)).to(torch.float64)
    return torch.special.ndtri(ranks / (n + 1))


def principal_components(
    x: torch.Tensor, rank: int | None = None, *, rel_tol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre ``x`` and return ``(scores, variances)``: the coordinates of each token on the top
    ``rank`` principal axes (n × r) and the sample variances along them (r,), largest first.

    Axes whose variance is below ``rel_tol`` × the largest are dropped (numerically null
    directions), so r ≤ min(rank, numerical rank of x).
    """
    n, d = x.shape
    centred = x - x.mean(dim=0, keepdim=True)
    if d <= n:
        evals, evecs = torch.linalg.eigh(centred.T @ centred)
        evals, evecs = evals.flip(0), evecs.flip(1)
        scores_of = lambda r: centred @ evecs[:, :r]  # noqa: E731
    else:
        evals, evecs = torch.linalg.eigh(centred @ centred.T)
        evals, evecs = evals.flip(0), evecs.flip(1)
        scores_of = lambda r: evecs[:, :r] * evals[:r].clamp_min(0).sqrt()  # noqa: E731
    top = float(evals[0]) if evals.numel() else 0.0
    keep = int((evals > rel_tol * top).sum()) if top > 0 else 0
    if rank is not None:
        keep = min(keep, rank)
    variances = evals[:keep] / max(n - 1, 1)
    return scores_of(keep), variances


def random_projection(x: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Project ``x`` (n × d) onto ``dim`` seeded Gaussian directions scaled by 1/√dim; the same
    seed and d give the same matrix for every variable."""
    generator = torch.Generator().manual_seed(int(seed))
    matrix = torch.randn(x.shape[1], dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    return x @ matrix


def reduce_dim(x: torch.Tensor, method: str, dim: int, seed: int = 0) -> torch.Tensor:
    """Reduce ``x`` to ``dim`` coordinates with ``method`` in :data:`REDUCTIONS`; a variable that
    already has at most ``dim`` features is returned unchanged."""
    if method == "none" or x.shape[1] <= dim:
        return x
    if method == "pca":
        return principal_components(x, dim)[0]
    if method == "random":
        return random_projection(x, dim, seed)
    raise ValueError(f"unknown reduction {method!r}")
