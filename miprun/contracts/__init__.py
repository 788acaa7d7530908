"""The contract between miprun and the strategies it runs — everything a plugin imports.

* :mod:`~miprun.contracts.capabilities` — what a strategy declares when it registers.
* :mod:`~miprun.contracts.protocols` — the five strategy protocols, :class:`RunContext`, and the
  ``register`` callbacks of the hooks.
* :mod:`~miprun.contracts.blocks` — block data: :class:`BoundaryStates`, :class:`SpanScores`,
  :class:`Selection`.
* :mod:`~miprun.contracts.neurons` — neuron data: :class:`FFNActivations`, :class:`NeuronScores`,
  :class:`NeuronSelection`.
* :mod:`~miprun.contracts.architectures` — :class:`ArchitectureSpec`.

Strategy modules import from here (and from helpers such as :mod:`miprun.probing`), never from the
engine, the run or compare orchestration, or the CLI. Importing this package imports no torch.
"""

from miprun.contracts.architectures import ArchitectureSpec
from miprun.contracts.blocks import BoundaryStates, Selection, SpanScores
from miprun.contracts.capabilities import GRANULARITIES, Capabilities
from miprun.contracts.neurons import (
    NORMALIZE,
    FFNActivations,
    NeuronScores,
    NeuronSelection,
)
from miprun.contracts.protocols import (
    Collector,
    Estimator,
    Healer,
    HealingPreview,
    PairwiseEstimator,
    Register,
    RegisterArchitecture,
    RunContext,
    Scorer,
    Selector,
    Surgeon,
)

__all__ = [
    "ArchitectureSpec", "BoundaryStates", "Capabilities", "Collector", "Estimator", "FFNActivations",
    "GRANULARITIES", "Healer", "HealingPreview", "NORMALIZE", "NeuronScores", "NeuronSelection", "PairwiseEstimator", "Register",
    "RegisterArchitecture", "RunContext", "Scorer", "Selection", "Selector", "SpanScores", "Surgeon",
]
