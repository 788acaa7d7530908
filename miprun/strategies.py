"""Protocols for the five strategy kinds, and the data that flows between them.

collect → estimate/score → select → operate::

    states = collector.collect(model, adapter, input_ids)       # BoundaryStates
    scores = scorer.score(states, estimator)                    # SpanScores
    selection = selector.select(scores, n)                      # Selection
    surgeon.apply(model, adapter, selection.blocks)             # edits the model in place

Every factory registered through :mod:`miprun.hookspecs` returns an object following one of these
protocols; the host sets its ``name`` attribute to the registered name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from miprun.scores import SpanScores


@dataclass
class BoundaryStates:
    """The residual stream at every block boundary: ``states[i]`` is the input of block ``i`` and
    ``states[i + 1]`` its output, each a float32 CPU tensor of shape (tokens, hidden) holding the
    same token positions for every boundary."""

    states: list[Any]
    forward_passes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        """Number of blocks T (there are T + 1 boundaries)."""
        return len(self.states) - 1


@dataclass
class RunContext:
    """What a strategy may need beyond its main input: the model and the calibration tokens.

    Scorers and selectors whose method accepts a ``context`` keyword receive one (criteria that run
    the model, such as SLEB or perplexity-drop, need it); others never see it. Strategies that run
    forward passes over the calibration tokens add them to ``forward_passes`` so that runs can report
    their cost.
    """

    model: Any
    adapter: Any
    input_ids: Any
    tokenizer: Any = None
    seed: int = 0
    forward_passes: int = 0


def accepts_context(method: Any) -> bool:
    """Whether a strategy method takes the optional ``context`` keyword."""
    import inspect

    try:
        return "context" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def call_with_context(method: Any, *args: Any, context: RunContext) -> Any:
    """Call ``method(*args)``, adding ``context=`` when the method accepts it."""
    return method(*args, context=context) if accepts_context(method) else method(*args)


@dataclass
class Selection:
    """What a selector chose: 0-based block indices in original numbering, and how it got there."""

    blocks: list[int]
    evaluations: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Collector(Protocol):
    """Runs the model on calibration tokens and returns what scorers need."""

    name: str

    def collect(self, model: Any, adapter: Any, input_ids: Any, *, progress: Any = None) -> BoundaryStates:
        """Run ``model`` on ``input_ids`` (n × L token ids) and return the boundary states."""


@runtime_checkable
class Estimator(Protocol):
    """Estimates mutual information between two sample matrices over the same n tokens.

    ``prepare`` does the per-variable work (a Gram matrix, a rank transform, …) once so that one
    boundary state can be paired with many others at the cost of ``mi_prepared`` alone.
    """

    name: str

    def prepare(self, x: Any) -> Any:
        """Precompute what the estimator needs from ``x`` (n × d); raise MiprunError if n is too small."""

    def mi_prepared(self, px: Any, py: Any) -> float:
        """MI in nats between two prepared variables."""

    def mi(self, x: Any, y: Any) -> float:
        """MI in nats between ``x`` (n × d_x) and ``y`` (n × d_y)."""


@runtime_checkable
class Scorer(Protocol):
    """Turns boundary states into block and span importance (lower = safer to remove)."""

    name: str
    needs_estimator: bool

    def score(self, states: BoundaryStates, estimator: Any | None) -> SpanScores:
        """Return lazily evaluated span scores over ``states.num_blocks`` blocks.

        May also accept ``context: RunContext`` (keyword) when the criterion needs the model. A
        scorer that can score any block set removed together passes ``compute_set`` to
        :class:`SpanScores`; Fast-Block-Select then refines the whole set on it."""


@runtime_checkable
class Selector(Protocol):
    """Chooses ``n`` blocks to remove. An optional class attribute ``default_scorer`` names the
    scorer a run uses when this selector is chosen and no scorer is named."""

    name: str

    def select(self, scores: SpanScores, n: int) -> Selection:
        """Return exactly ``n`` distinct block indices in ``range(scores.num_blocks)``.

        May also accept ``context: RunContext`` (keyword) when selection needs the model (SLEB)."""


@runtime_checkable
class Surgeon(Protocol):
    """Edits a model in place to remove the selected blocks (or neurons)."""

    name: str

    def apply(self, model: Any, adapter: Any, blocks: list[int]) -> dict[str, Any]:
        """Remove ``blocks`` from ``model``; return a summary of what changed (for the report)."""
