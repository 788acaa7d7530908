"""Neuron (width) data that flows between strategies: FFN activations, pairwise scores, a selection.

* :class:`FFNActivations` — what a neuron collector returns: the input of every FFN's down
  projection for the same token positions in every layer.
* :class:`NeuronScores` — what a neuron scorer returns: the pairwise dependence between the
  neurons of every FFN layer, computed lazily per layer.
* :class:`NeuronSelection` — what a neuron selector returns: the kept neurons of every layer (and,
  optionally, merges a surgeon folds in).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from miprun.errors import MiprunError

CACHE_BYTES = 1 << 30
"""Default memory for cached pairwise matrices."""

NORMALIZE = ("auto", "self", "none")
"""How :meth:`NeuronScores.similarity` normalises a pairwise matrix."""


@dataclass
class FFNActivations:
    """The input of every FFN's down projection (after the activation / gating) for the same token
    positions in every layer: ``acts[i]`` is a (tokens × width) CPU tensor of block ``layers[i]``."""

    layers: list[int]
    acts: list[Any]
    forward_passes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        """FFN width (number of neurons) of every collected layer."""
        return [int(a.shape[1]) for a in self.acts]

    @property
    def num_tokens(self) -> int:
        """Number of token positions kept (the same in every layer)."""
        return int(self.acts[0].shape[0]) if self.acts else 0


class NeuronScores:
    """Pairwise dependence between the neurons of every FFN layer, computed lazily per layer.

    ``pairwise(i)`` is the symmetric (width × width) matrix of layer position ``i`` (block
    ``layers[i]``); higher = more redundant (MI in nats, or |Pearson ρ|). Matrices are cached while
    their total size stays under ``cache_bytes``; beyond that only the last one is kept, so layers
    of 11 008 neurons are handled one at a time. ``seconds[i]`` is the time spent on layer ``i``.

    :param compute: ``compute(i) -> matrix``; None for runs whose selector uses no activations.
    :param self_information: the diagonal holds each neuron's finite self-information I(i; i) (Rényi
        MI; |ρ| = 1), so :meth:`similarity` can normalise by it; False when the diagonal is only a cap
        (Gaussian-copula MI is infinite there).
    """

    def __init__(
        self,
        layers: list[int],
        widths: list[int],
        compute: Callable[[int], Any] | None = None,
        *,
        metric: str = "none",
        activations: FFNActivations | None = None,
        cache_bytes: int = CACHE_BYTES,
        self_information: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.layers = list(layers)
        self.self_information = bool(self_information)
        self.widths = list(widths)
        self.metric = metric
        self.activations = activations
        self.info: dict[str, Any] = dict(info or {})
        self.seconds: dict[int, float] = {}
        self.layer_info: dict[int, dict[str, Any]] = {}
        self._compute = compute
        self._cache: dict[int, Any] = {}
        self._cache_bytes = cache_bytes

    @property
    def num_layers(self) -> int:
        """Number of FFN layers."""
        return len(self.layers)

    def pairwise(self, index: int) -> Any:
        """The (width × width) dependence matrix of layer position ``index`` (computed once if cached)."""
        if self._compute is None:
            raise MiprunError("this run collected no activations; the selector needs a neuron scorer (neuron-mi)")
        if index in self._cache:
            return self._cache[index]
        start = time.perf_counter()
        matrix = self._compute(index)
        self.seconds[index] = round(self.seconds.get(index, 0.0) + time.perf_counter() - start, 4)
        size = matrix.numel() * matrix.element_size()
        held = sum(m.numel() * m.element_size() for m in self._cache.values())
        if held + size > self._cache_bytes:
            self._cache.clear()
        self._cache[index] = matrix
        return matrix

    def similarity(self, index: int, normalize: str = "auto") -> Any:
        """The matrix of layer ``index`` as selectors compare it.

        ``normalize="self"`` divides by the self-information, s_ij = I_ij / √(I_ii I_jj) (1 on the
        diagonal and for exact copies; 0 off the diagonal for a neuron with I_ii = 0); ``"none"``
        returns the raw values; ``"auto"`` (default) normalises when the diagonal is a
        self-information (:attr:`self_information`) and otherwise returns the raw values.
        """
        if normalize not in NORMALIZE:
            raise MiprunError(f"normalize={normalize!r} must be one of {', '.join(NORMALIZE)}")
        matrix = self.pairwise(index)
        if normalize == "none" or (normalize == "auto" and not self.self_information):
            return matrix
        import torch

        diagonal = matrix.diagonal().to(torch.float64)
        scale = torch.where(diagonal > 1e-12, diagonal, torch.full_like(diagonal, float("inf"))).sqrt()
        out = (matrix.to(torch.float64) / (scale[:, None] * scale[None, :])).to(torch.float32)
        out.fill_diagonal_(1.0)
        return out

    def release(self, index: int) -> None:
        """Drop the cached matrix of layer position ``index``."""
        self._cache.pop(index, None)

    def summary(self) -> dict[str, Any]:
        """Metric, per-layer time (s) and estimator details for the report."""
        per_layer = [self.seconds.get(i) for i in range(self.num_layers)]
        done = [s for s in per_layer if s is not None]
        return {
            "metric": self.metric,
            "layers": self.layers,
            "widths": self.widths,
            "seconds_per_layer": per_layer,
            "mean_seconds_per_layer": round(sum(done) / len(done), 4) if done else None,
            "layer_info": {str(self.layers[i]): v for i, v in sorted(self.layer_info.items())},
            **self.info,
        }


@dataclass
class NeuronSelection:
    """What a neuron selector chose: the kept neuron indices of every FFN layer (block index → sorted
    list, original numbering), and how it got there."""

    keep: dict[int, list[int]]
    evaluations: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    merges: dict[int, list[tuple[int, int, float]]] | None = None
    """Optional compensation: per layer, ``(removed j, kept k, β)`` — the surgeon adds β × neuron j's
    down-projection weights to neuron k's (``mds-cluster merge=True``)."""

    def removed(self, widths: dict[int, int]) -> dict[int, list[int]]:
        """Removed neuron indices per layer, given each layer's original width."""
        return {layer: sorted(set(range(widths[layer])) - set(kept)) for layer, kept in self.keep.items()}
