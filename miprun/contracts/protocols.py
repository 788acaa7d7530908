"""The protocols of the five strategy kinds, the run context they may use, and the ``register``
callbacks the hooks receive.

collect → estimate/score → select → operate, at either granularity::

    inputs = collector.collect(model, adapter, input_ids)             # BoundaryStates | FFNActivations
    scores = scorer.score(inputs, estimator, context=context)         # SpanScores | NeuronScores
    selection = selector.select(scores, n, context=context)           # Selection | NeuronSelection
    surgeon.apply(model, adapter, selection)                          # edits the model in place

The engine calls exactly these signatures. What each strategy needs (collected states, an
estimator, the model) is declared once, at registration (:class:`~miprun.contracts.Capabilities`);
a strategy that needs nothing from ``context`` simply ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from miprun.contracts.architectures import ArchitectureSpec
from miprun.contracts.blocks import BoundaryStates, Selection, SpanScores
from miprun.contracts.neurons import FFNActivations, NeuronScores, NeuronSelection


@dataclass
class RunContext:
    """What a strategy may need beyond its main input: the model, the calibration tokens and what
    the run's collector gathered (``inputs``: :class:`BoundaryStates` or :class:`FFNActivations`,
    None when no strategy of the plan declared ``reads_states``) — a selector that reads collected
    states finds them here.

    Strategies that run forward passes over the calibration tokens add them to ``forward_passes``
    (:class:`miprun.probing.Prober` does it for them) so that runs can report their cost.
    """

    model: Any
    adapter: Any
    input_ids: Any
    tokenizer: Any = None
    seed: int = 0
    forward_passes: int = 0
    inputs: Any = None
    healing: Any = None
    """A :class:`HealingPreview` of the run's healer when the run heals block sets and its healer
    offers one (None otherwise): scorers that compare pruned outputs judge the healed model with it."""
    dense: Any = None
    """The dense block outputs the run has computed, by forward batch (a
    :class:`~miprun.probing.KnownOutputs`; None outside a run): probers made with this context add
    their reference runs' outputs, and the run's healer replays them (``heal(..., known=...)``)."""


@runtime_checkable
class Collector(Protocol):
    """Runs the model on calibration tokens and returns what the scorers read."""

    def collect(self, model: Any, adapter: Any, input_ids: Any, *, progress: Any = None) -> BoundaryStates | FFNActivations:
        """Run ``model`` on ``input_ids`` (n × L token ids); ``progress(k)`` after every k sequences."""


@runtime_checkable
class Estimator(Protocol):
    """Estimates mutual information between two sample matrices over the same n tokens (block scorers).

    ``prepare`` does the per-variable work (a Gram matrix, a rank transform, …) once so that one
    boundary state can be paired with many others at the cost of ``mi_prepared`` alone.
    """

    def prepare(self, x: Any) -> Any:
        """Precompute what the estimator needs from ``x`` (n × d); raise MiprunError if n is too small."""

    def mi_prepared(self, px: Any, py: Any) -> float:
        """MI in nats between two prepared variables."""

    def mi(self, x: Any, y: Any) -> float:
        """MI in nats between ``x`` (n × d_x) and ``y`` (n × d_y)."""


@runtime_checkable
class PairwiseEstimator(Protocol):
    """Estimates the dependence of every pair of scalar neurons of one layer (neuron scorers);
    registered with ``pairwise=True``.

    :ivar metric: what the matrix holds (``"mi"`` in nats, ``"abs-pearson"``, …).
    :ivar self_information: whether the diagonal is each neuron's finite self-information I(i; i)
        (then selectors may normalise by it) rather than a cap.
    """

    metric: str
    self_information: bool

    def pairwise(self, acts: Any, *, info: dict[str, Any] | None = None) -> Any:
        """The symmetric (width × width) matrix for ``acts`` (tokens × width); details into ``info``."""


@runtime_checkable
class Scorer(Protocol):
    """Turns collected inputs into importance: span scores (block) or pairwise neuron scores (neuron)."""

    def score(self, inputs: Any, estimator: Any = None, *, context: RunContext | None = None) -> SpanScores | NeuronScores:
        """Score ``inputs`` (the collector's output, or None when the scorer declared it reads none).

        Block scorers return :class:`SpanScores` (lower importance = safer to remove); a scorer
        registered with ``set_scores=True`` passes ``compute_set`` so any block set can be scored.
        Neuron scorers return :class:`NeuronScores`."""


@runtime_checkable
class Selector(Protocol):
    """Chooses what to remove: ``n`` blocks, or ``n`` neurons from every FFN layer."""

    def select(self, scores: Any, n: int, *, context: RunContext | None = None) -> Selection | NeuronSelection:
        """Return the selection. A selector registered with ``needs_scores=False`` gets scores that
        know only the model's shape (block count, or layers and widths)."""


@runtime_checkable
class Surgeon(Protocol):
    """Edits a model in place to carry out a selection, keeping its config consistent so that the
    saved checkpoint loads with stock transformers."""

    def apply(self, model: Any, adapter: Any, selection: Any) -> dict[str, Any]:
        """Carry out ``selection`` (:class:`Selection` or :class:`NeuronSelection`) on ``model``;
        return a summary of what changed (parameter counts before/after, …) for the report."""


@runtime_checkable
class Healer(Protocol):
    """Heals a selection before the surgeon carries it out (``--heal``)."""

    def heal(self, model: Any, adapter: Any, blocks: list[int], input_ids: Any) -> dict[str, Any]:
        """Change the weights of ``model`` that stay so that, once ``blocks`` are removed, it
        reproduces the dense model on the healing tokens ``input_ids`` as well as it can; the
        blocks are still in place. Raise :class:`~miprun.errors.MiprunError` with one line when the
        architecture cannot be healed. Returns a summary for the report (JSON-serialisable).

        A healer whose ``heal`` also takes the keyword ``known`` receives the run's
        :attr:`RunContext.dense`: ``known(batch)`` gives every block's dense output for a forward
        batch of ``input_ids`` the run has already computed (None for the others), to reuse."""

    def applied(self, model: Any, adapter: Any, blocks: list[int], input_ids: Any) -> Any:
        """A context manager within which the healing :meth:`heal` would fold acts at run time
        (weights untouched), yielding the same summary — for judging candidate sets."""

    # optional: ``undo() -> bool`` — put back what the last ``heal`` changed (before or after the
    # surgeon; True when it could): a default healer whose healed model loses to plain removal on
    # the quality check's held-out windows is undone (:mod:`miprun.heal_guard`).


@runtime_checkable
class HealingPreview(Protocol):
    """What a healer would make of any block set, cheap enough for a selector's search (a healer
    may offer one through ``preview(model, adapter, fit_ids, *, context=None)``)."""

    def applied(self, blocks: Any) -> Any:
        """A context manager within which the model runs as if ``blocks`` were removed and healed
        (the fits at run time, weights untouched) when the caller skips ``blocks``; it yields the
        first block whose output the fits change (None when ``blocks`` is empty)."""

    def info(self) -> dict[str, Any]:
        """What the preview did, for the report (JSON-serialisable)."""

    # optional: ``release(keep_dense=False)`` — free what the preview holds (its fits; with
    # ``keep_dense`` false its dense outputs too), called once the selection (and then the heal)
    # no longer needs it; a preview asked again afterwards recomputes what it needs. A preview that
    # runs the dense model through a :class:`~miprun.probing.Prober` made with the run's context
    # shares those outputs with the heal (:attr:`RunContext.dense`).


class Register(Protocol):
    """The callback every strategy hook receives."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        description: str = "",
        **capabilities: Any,
    ) -> None:
        """Register strategy ``name`` (what users type: ``--estimator renyi``).

        :param factory: a callable taking keyword options and returning the strategy, or a
            ``"module:attribute"`` string imported only when the strategy is used.
        :param description: the one line ``miprun list`` shows.
        :param capabilities: keywords of :class:`~miprun.contracts.Capabilities` (granularity,
            reads_states, runs_model, needs_estimator, needs_scores, default partners, …).
        """


class RegisterArchitecture(Protocol):
    """The callback the architectures hook receives."""

    def __call__(self, model_type: str, spec: ArchitectureSpec, *, description: str = "") -> None:
        """Make models whose ``config.model_type`` is ``model_type`` prunable with layout ``spec``."""
