"""Gaussian-channel mutual information between a block's input and output, token by token.

A residual block maps its input x to y = x + u(x). Treat the block's update u as the noise of an
additive channel x → y. For a Gaussian channel the mutual information is the output entropy minus
the noise entropy, I(X; Y) = h(Y) − h(Y | X) = h(Y) − h(U); with the Gaussian (maximum-entropy)
entropies of the per-token powers this is, per dimension,

    I_t = ½ · log(‖y_t‖² / ‖y_t − x_t‖²),        I = mean over tokens t of I_t.

It is large when the output is dominated by what came in (the update is weak noise on top of the
signal, so the block adds little) and small when the update rewrites the state. Unlike kernel or
k-NN estimators it does not saturate for invertible maps (the true MI of a residual block with a
small update is infinite, so those estimators report their own bias), and it needs no kernel width.
It requires x and y in the same coordinates — the residual stream on both sides of a block span.

Why this estimator is the default for block scoring, and what it was measured against, is in
docs/estimators.md.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.errors import MiprunError
from miprun.estimators.preprocess import (
    NORMALIZATIONS,
    as_matrix,
    check_choice,
    normalize_tokens,
    require_samples,
)


class GaussianChannelEstimator:
    """Per-token additive Gaussian channel MI, ½·log(‖y‖² / ‖y − x‖²) averaged over tokens.

    :param normalize: token normalisation applied to both sides first (``none`` by default: the
        residual stream's own scale is what the channel carries; ``rms`` mirrors the model's
        pre-block RMS norm).
    :param eps: floor for the squared update norm (an exact identity block gets a large finite MI).
    """

    name = "gaussian-channel"
    min_samples = 1

    def __init__(self, *, normalize: str = "none", eps: float = 1e-12) -> None:
        check_choice("normalize", normalize, NORMALIZATIONS, self.name)
        self.normalize = normalize
        self.eps = eps

    def prepare(self, x: Any) -> torch.Tensor:
        """The tokens as float64, normalised per ``normalize``."""
        matrix = as_matrix(x, self.name)
        require_samples(matrix.shape[0], self.min_samples, self.name)
        return normalize_tokens(matrix.double(), self.normalize)

    def mi_prepared(self, px: torch.Tensor, py: torch.Tensor) -> float:
        """Mean over tokens of ½·log(‖y_t‖² / ‖y_t − x_t‖²), in nats per dimension."""
        if px.shape != py.shape:
            raise MiprunError(
                f"gaussian-channel MI needs x and y of the same shape (same tokens, same space), got "
                f"{tuple(px.shape)} and {tuple(py.shape)}; use renyi, ksg or gaussian for other pairs"
            )
        signal = py.pow(2).sum(-1)
        noise = (py - px).pow(2).sum(-1).clamp_min(self.eps)
        return float(0.5 * torch.log(signal.clamp_min(self.eps) / noise).mean())

    def mi(self, x: Any, y: Any) -> float:
        """MI between ``x`` and ``y`` (same shape)."""
        return self.mi_prepared(self.prepare(x), self.prepare(y))
