"""What a strategy declares about itself when it is registered: its capabilities.

The host plans a run from these declarations alone, before any strategy code is imported: which
granularity a name works at, whether the run needs a collection pass, an estimator or a scorer,
and which partner a strategy runs with when the user names only it. A plugin passes them as
keywords of ``register`` (see :mod:`miprun.hookspecs`)::

    register("sleb", "miprun.selectors.sleb:SLEBSelector", description="...",
             runs_model=True, needs_scores=False)

Every field has the default that fits most strategies, so most registrations name none.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from miprun.errors import MiprunError, did_you_mean

GRANULARITIES = ("block", "neuron")
"""What a run removes: whole blocks (depth) or FFN neurons (width)."""


@dataclass(frozen=True)
class Capabilities:
    """The declared inputs, outputs and default partners of one strategy.

    :param granularity: the granularities it works at (``"block"``, ``"neuron"`` or both).
    :param reads_states: (scorer, selector) it reads what the run's collector gathered; the engine
        runs the collection pass only when some strategy of the plan declares this. Scorers read
        collected states unless they declare ``reads_states=False`` (those that run the model or
        read weights instead); selectors read none unless they declare it.
    :param runs_model: (scorer, selector) it runs the model on the calibration tokens through the
        :class:`~miprun.contracts.protocols.RunContext` it is handed.
    :param needs_estimator: (scorer) it scores through an MI estimator.
    :param pairwise: (estimator) it provides ``pairwise(acts)`` of scalar neurons
        (:class:`~miprun.contracts.protocols.PairwiseEstimator`); (scorer) it needs such an estimator.
    :param needs_scores: (selector) it reads the scorer's scores; False for selectors that decide
        alone (SLEB, LaCo, random), which then run without scorer.
    :param set_scores: (scorer) its scores value any *set* of blocks removed together
        (:attr:`~miprun.contracts.blocks.SpanScores.supports_sets`); (selector) it requires that.
    :param default_scorer: (selector) the scorer a run uses when the user names only this selector.
    :param default_selector: (scorer) the selector a run uses when the user names only this scorer.
    :param default_estimator: (scorer) the estimator it uses when the user names none.
    :param default_surgeon: (selector) the surgeon that carries out its selection (LaCo merges).
    :param heals: (healer) the surgeons whose edits it heals (``remove-blocks``); a run uses a
        healer only with one of them.
    :param caveat: (any) a known limit, measured, that a run using the strategy states in its
        summary and report (one sentence naming where the evidence is).
    """

    granularity: tuple[str, ...] = ("block",)
    reads_states: bool = False
    runs_model: bool = False
    needs_estimator: bool = False
    pairwise: bool = False
    needs_scores: bool = True
    set_scores: bool = False
    default_scorer: str | None = None
    default_selector: str | None = None
    default_estimator: str | None = None
    default_surgeon: str | None = None
    heals: tuple[str, ...] = ()
    caveat: str | None = None

    @classmethod
    def declare(cls, kind: str, owner: str, **declared: Any) -> "Capabilities":
        """Capabilities of a strategy of ``kind`` from ``register`` keywords, with the kind's own
        defaults (:data:`KIND_DEFAULTS`); an unknown keyword or granularity is an error naming
        ``owner`` (the strategy and its plugin)."""
        known = [f.name for f in fields(cls)]
        for key in declared:
            if key not in known:
                raise MiprunError(f"{owner} declares unknown capability '{key}'{did_you_mean(key, known)}; "
                                  f"known capabilities: {', '.join(known)}")
        granularity = declared.get("granularity", cls.granularity)
        granularity = (granularity,) if isinstance(granularity, str) else tuple(granularity)
        bad = [g for g in granularity if g not in GRANULARITIES]
        if bad or not granularity:
            raise MiprunError(f"{owner} declares granularity {list(granularity)}; "
                              f"use one or more of: {', '.join(GRANULARITIES)}")
        declared["granularity"] = granularity
        return cls(**{**KIND_DEFAULTS.get(kind, {}), **declared})

    def declared(self) -> dict[str, Any]:
        """The fields that differ from the defaults (for listings and reports)."""
        default = Capabilities()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


KIND_DEFAULTS: dict[str, dict[str, Any]] = {"scorer": {"reads_states": True}}
"""Capabilities that differ from the field defaults for every strategy of a kind unless declared."""
