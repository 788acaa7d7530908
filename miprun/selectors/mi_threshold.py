"""Selector ``mi-threshold``: Algorithm 1 of Huang, Song & Pao — drop one neuron of every randomly
drawn pair whose mutual information exceeds a threshold T_r.

Per FFN layer, starting from all neurons:

    repeat: draw two distinct remaining neurons (k, l) uniformly at random;
            if I(Z_k; Z_l) > T_r: remove one of them
    until n neurons are removed or ``max_iterations`` pairs were drawn.

Decisions where the paper is silent:

* **Which one of the pair goes.** The neuron with the smaller *centrality* — its summed MI with the
  neurons it is redundant with (MI > T_r), over the whole layer, computed once: the other one
  represents that group better. For a neuron and its noisy copies the original has the larger sum
  (it shares more with each copy than the copies share with each other), so copies go first — also
  after some copies are gone, which is why the sum is not taken over the neurons still kept (an
  original and its last copy would tie). Values below T_r are left out because the many small MI
  values with unrelated neurons are noise that swamps this difference (measured on the synthetic
  copy test). Ties (exact copies): the second drawn goes.
* **Normalised MI.** As in ``mds-cluster``, by default the MI is divided by the self-information
  when the estimator provides one, so T_r compares neurons of different entropy on one scale.
* **T_r.** ``threshold`` in the estimator's units (after normalisation) (nats; |ρ| for ``neuron-pearson``), or, by default,
  the ``quantile`` of the layer's off-diagonal values, so one setting works across layers and
  estimators whose MI scales differ.
* **Equal width.** Every layer must lose exactly n neurons (standard config). If the draws end
  before that, the remaining removals are *completed* deterministically: the remaining pair with the
  highest MI loses its member by the same rule, until n are gone. The trace records how many
  removals each layer got from draws above T_r and how many from completion.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import NORMALIZE, NeuronScores, NeuronSelection
from miprun.errors import MiprunError

_DRAW_BLOCK = 4096


def off_diagonal_quantile(matrix: torch.Tensor, q: float, max_values: int = 1 << 22) -> float:
    """The ``q``-quantile of the strictly upper-triangular values (a strided subsample when huge)."""
    m = matrix.shape[0]
    rows, cols = torch.triu_indices(m, m, 1)
    values = matrix[rows, cols].to(torch.float64)
    if values.numel() > max_values:
        values = values[:: values.numel() // max_values + 1]
    return float(torch.quantile(values, q)) if values.numel() else 0.0


def threshold_prune(
    matrix: torch.Tensor, n: int, threshold: float, *, max_iterations: int, generator: torch.Generator
) -> tuple[list[int], dict[str, Any]]:
    """Algorithm 1 on one layer's symmetric MI ``matrix``: the kept neuron indices (sorted) and a
    trace entry (draws, removals by threshold, removals by completion)."""
    m = matrix.shape[0]
    values = matrix.to(torch.float64).clone()
    values.fill_diagonal_(0.0)
    alive = torch.ones(m, dtype=torch.bool)
    centrality = torch.where(values > threshold, values, torch.zeros_like(values)).sum(dim=1)
    removed: list[int] = []

    def drop(k: int, l: int) -> None:
        """Remove the less central of neurons ``k`` and ``l`` (ties: ``l``, the second drawn)."""
        loser = k if centrality[k] < centrality[l] else l
        alive[loser] = False
        removed.append(loser)

    draws = 0
    while len(removed) < n and draws < max_iterations and int(alive.sum()) >= 2:
        alive_index = alive.nonzero().flatten()
        block = min(_DRAW_BLOCK, max_iterations - draws)
        first = alive_index[torch.randint(len(alive_index), (block,), generator=generator)]
        offset = torch.randint(1, len(alive_index), (block,), generator=generator)
        second = alive_index[(torch.searchsorted(alive_index, first) + offset) % len(alive_index)]
        hits = (values[first, second] > threshold).nonzero().flatten().tolist()
        position = block
        for h in hits:
            k, l = int(first[h]), int(second[h])
            if alive[k] and alive[l]:
                drop(k, l)
                if len(removed) >= n:
                    position = h + 1
                    break
        draws += position
    by_threshold = len(removed)
    while len(removed) < n:
        masked = values.masked_fill(~(alive[:, None] & alive[None, :]), float("-inf"))
        masked.fill_diagonal_(float("-inf"))
        flat = int(masked.argmax())
        drop(flat // m, flat % m)
    kept = alive.nonzero().flatten().tolist()
    return kept, {"draws": draws, "removed_by_threshold": by_threshold, "removed_by_completion": len(removed) - by_threshold,
                  "threshold": threshold}


class MIThresholdSelector:
    """Huang, Song & Pao's Algorithm 1 per layer (see the module docstring).

    :param threshold: T_r in the estimator's units; None uses ``quantile``.
    :param quantile: T_r as this quantile of the layer's pairwise values (default 0.99).
    :param max_iterations: pairs drawn per layer at most (None: 100 × width).
    :param normalize: compare MI divided by the self-information (``auto``/``self``) or raw (``none``);
        see :meth:`~miprun.contracts.NeuronScores.similarity`.
    :param seed: seed of the draws (the run's seed).
    """

    name = "mi-threshold"

    def __init__(self, *, threshold: float | None = None, quantile: float = 0.99,
                 max_iterations: int | None = None, normalize: str = "auto", seed: int = 0) -> None:
        if normalize not in NORMALIZE:
            raise MiprunError(f"mi-threshold option normalize={normalize!r} must be one of {', '.join(NORMALIZE)}")
        self.normalize = normalize
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise MiprunError(f"mi-threshold option threshold={threshold!r} must be a number (nats) or none")
        if not 0.0 < float(quantile) < 1.0:
            raise MiprunError(f"mi-threshold option quantile={quantile!r} must be between 0 and 1")
        if max_iterations is not None and int(max_iterations) < 1:
            raise MiprunError(f"mi-threshold option max_iterations={max_iterations!r} must be at least 1")
        self.threshold = None if threshold is None else float(threshold)
        self.quantile = float(quantile)
        self.max_iterations = None if max_iterations is None else int(max_iterations)
        self.seed = int(seed)

    def select(self, scores: NeuronScores, n: int, *, context: Any = None) -> NeuronSelection:
        """Remove ``n`` neurons from every layer by Algorithm 1 (with deterministic completion)."""
        generator = torch.Generator().manual_seed(self.seed)
        keep: dict[int, list[int]] = {}
        trace: list[dict[str, Any]] = []
        draws = 0
        for index, layer in enumerate(scores.layers):
            matrix = scores.similarity(index, self.normalize)
            threshold = self.threshold if self.threshold is not None else off_diagonal_quantile(matrix, self.quantile)
            budget = self.max_iterations or 100 * scores.widths[index]
            kept, info = threshold_prune(matrix, n, threshold, max_iterations=budget, generator=generator)
            keep[layer] = kept
            draws += info["draws"]
            trace.append({"layer": layer, **info})
        return NeuronSelection(keep=keep, evaluations=draws, trace=trace,
                               info={"metric": scores.metric, "quantile": None if self.threshold is not None else self.quantile})
