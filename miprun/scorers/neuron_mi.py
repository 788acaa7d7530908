"""Scorer ``neuron-mi``: pairwise redundancy of the FFN neurons of every layer (Huang, Song & Pao).

For each layer it asks the run's pairwise estimator (``neuron-renyi``, ``neuron-gaussian``,
``neuron-pearson`` or a plugin's) for the symmetric neurons × neurons matrix of MI (or |ρ|) and
hands selectors a :class:`~miprun.contracts.NeuronScores`. By default every layer is computed
here, in the ``estimate`` stage, with its time recorded (``seconds_per_layer`` in the report) —
as long as all matrices fit in ``cache_bytes``; beyond that (e.g. 32 layers of 11 008 neurons)
layers are computed lazily when a selector asks for them and released after use, so memory holds
one layer's matrix at a time.
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import FFNActivations, NeuronScores, PairwiseEstimator
from miprun.errors import MiprunError


class NeuronMIScorer:
    """All-pairs neuron dependence per FFN layer from a pairwise estimator.

    :param eager: compute every layer now when the matrices fit in ``cache_bytes``.
    :param cache_bytes: memory allowed for cached matrices (float32, width² × 4 bytes per layer).
    """

    name = "neuron-mi"

    def __init__(self, *, eager: bool = True, cache_bytes: int = 1 << 30) -> None:
        self.eager = bool(eager)
        self.cache_bytes = int(cache_bytes)

    def score(self, acts: FFNActivations, estimator: Any | None = None, *, context: Any = None) -> NeuronScores:
        """Neuron scores over the layers of ``acts``, each matrix from ``estimator.pairwise``."""
        if not isinstance(acts, FFNActivations):
            raise MiprunError("scorer 'neuron-mi' needs FFN activations; use collector ffn-activations")
        if not isinstance(estimator, PairwiseEstimator):
            raise MiprunError(
                "scorer 'neuron-mi' needs a pairwise (neuron) estimator; pass --estimator renyi, gaussian or pearson"
            )
        scores: NeuronScores

        def compute(index: int) -> Any:
            """The pairwise matrix of layer position ``index``, its details kept in ``layer_info``."""
            info: dict[str, Any] = {}
            matrix = estimator.pairwise(acts.acts[index], info=info)
            scores.layer_info[index] = info
            return matrix

        scores = NeuronScores(
            acts.layers, acts.widths, compute, metric=estimator.metric, activations=acts,
            cache_bytes=self.cache_bytes, self_information=estimator.self_information,
        )
        total = sum(w * w * 4 for w in acts.widths)
        if self.eager and total <= self.cache_bytes:
            for index in range(scores.num_layers):
                scores.pairwise(index)
        return scores
