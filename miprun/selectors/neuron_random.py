"""Selector ``neuron-random``: remove FFN neurons uniformly at random (a seeded baseline).

Every layer draws its own n neurons from one generator seeded with the run's seed. Requested as
``--selector random`` at neuron granularity.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.contracts import NeuronScores, NeuronSelection


class NeuronRandomSelector:
    """Remove ``n`` random neurons from every layer.

    :param seed: generator seed (the run's seed).
    """

    name = "neuron-random"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)

    def select(self, scores: NeuronScores, n: int, *, context: Any = None) -> NeuronSelection:
        """Keep ``width − n`` random neurons per layer (sorted indices)."""
        generator = torch.Generator().manual_seed(self.seed)
        keep = {layer: sorted(torch.randperm(width, generator=generator)[n:].tolist())
                for layer, width in zip(scores.layers, scores.widths)}
        return NeuronSelection(keep=keep, info={"seed": self.seed})
