"""The run engine: carry out one plan on one model and one calibration sample.

collect (only when a strategy of the plan reads collected states) → score (only when the
selector reads scores) → select → check → operate, at either granularity. :func:`miprun.prune`
(``miprun run``) and :func:`miprun.compare.compare` (``miprun compare``) both call
:func:`execute`; what differs between blocks and neurons lives in :mod:`miprun.granularity`.

Several plans on the same model and tokens (a comparison) share a :class:`Collections`, so each
distinct collector runs once.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

from miprun.contracts import RunContext
from miprun.granularity import GRANULARITY
from miprun.models.finite import check_weights, finite_activations
from miprun.models.parameters import count_parameters
from miprun.plans import Plan
from miprun.probing import KnownOutputs
from miprun.progress import Reporter, stage
from miprun.registry import Registry, get_registry


@dataclass
class Collected:
    """What one collector gathered, and what it cost."""

    inputs: Any
    seconds: float


@dataclass
class Collections:
    """Collected inputs of the model on the calibration tokens, by collector name and options, so
    that plans run on the same model and tokens collect once."""

    store: dict[tuple[str, str], Collected] = field(default_factory=dict)

    def collect(self, plan: Plan, collector: Any, model: Any, adapter: Any, input_ids: Any, *,
                reporter: Reporter, timings: dict[str, float]) -> Collected:
        """The plan collector's inputs: gathered now (timed as the ``collect`` stage) or reused."""
        key = (plan.names["collector"], repr(sorted(plan.options["collector"].items())))
        if key not in self.store:
            start = time.perf_counter()
            with stage("collect", timings, reporter, total=int(input_ids.shape[0])):
                inputs = collector.collect(model, adapter, input_ids, progress=reporter.advance)
            self.store[key] = Collected(inputs, round(time.perf_counter() - start, 4))
        return self.store[key]


@dataclass
class Outcome:
    """What executing a plan produced: the selection, the scores, the surgery and the cost.

    :ivar collection: what the collector reported (None when the plan collects nothing).
    :ivar collect_seconds: the collection's time (also when the inputs were shared).
    :ivar forward_passes: passes over the calibration tokens, the collection's included.
    :ivar timings: stage → seconds for the stages this execution ran.
    :ivar plain_loss: the ``judge``'s loss of plain removal, measured before healing (None when
        the run healed nothing or had no judge).
    """

    plan: Plan
    count: int
    size: int
    scores: Any
    selection: Any
    surgery: dict[str, Any]
    collection: dict[str, Any] | None
    collect_seconds: float
    forward_passes: int
    timings: dict[str, float]
    plain_loss: float | None = None

    @property
    def seconds(self) -> float:
        """The method's cost in seconds: collection (shared or not), scoring, selection, surgery."""
        own = sum(v for k, v in self.timings.items() if k in ("estimate", "select", "operate"))
        return self.collect_seconds + own

    def report(self, registry: Registry) -> dict[str, Any]:
        """The report fields of this execution: strategies, granularity-specific results, cost,
        the selector's trace and the surgery."""
        fields = GRANULARITY[self.plan.granularity].report(self.scores, self.selection, count=self.count, total=self.size)
        fields["evaluations"]["forward_passes"] = self.forward_passes
        return {
            "granularity": self.plan.granularity,
            "method": self.plan.label,
            "strategies": self.plan.describe(registry),
            **fields,
            "collection": self.collection,
            "selection": {"trace": self.selection.trace, "info": self.selection.info},
            "surgery": self.surgery,
        }


def execute(
    plan: Plan,
    model: Any,
    adapter: Any,
    input_ids: Any,
    *,
    count: int,
    tokenizer: Any = None,
    seed: int = 0,
    strategies: dict[str, Any] | None = None,
    collections: Collections | None = None,
    registry: Registry | None = None,
    reporter: Reporter | None = None,
    timings: dict[str, float] | None = None,
    heal_ids: Any = None,
    heal_candidates: int = 1,
    judge: Any = None,
) -> Outcome:
    """Run ``plan`` on ``model`` (edited in place) with calibration ``input_ids`` (n × L).

    :param count: units to remove (blocks, or neurons per FFN layer), already checked.
    :param strategies: the plan's strategies when already built (kind → object); built here otherwise.
    :param collections: collected inputs shared with other plans on the same model and tokens.
    :param timings: stage seconds are added here (a fresh dict when None).
    :param heal_ids: the tokens the plan's healer (if any) fits on, before surgery; the calibration
        tokens when None. A healer the plan took by default that refuses the architecture (one
        line, recorded as ``surgery["healing"]["skipped"]``) leaves plain removal; a named one's
        refusal is the run's error.
    :param heal_candidates: with a healer, choose among the selection and the next best block
        sets the scores evaluated (up to this many in all) the one whose removal heals best on
        healing sequences the fit did not see (:func:`miprun.healing.heal_aware_choice`); 1 heals
        the selection as it is.
    :param judge: ``judge(skip) -> loss`` on held-out tokens (the quality check's): with a healer,
        plain removal of the selection is judged before healing (:attr:`Outcome.plain_loss`), so
        that the run can keep the healing only where it helps (:mod:`miprun.heal_guard`).
    """
    registry = registry or get_registry()
    reporter = reporter or Reporter()
    timings = {} if timings is None else timings
    collections = collections or Collections()
    strategies = strategies or plan.build(registry)
    granularity = GRANULARITY[plan.granularity]
    check_weights(adapter)

    healing = None
    ids_for_healing = input_ids if heal_ids is None else heal_ids
    healer = strategies.get("healer")
    if healer is not None and plan.reasons.get("healer") != "named":
        healing = _healability(healer, adapter, reporter)
        healer = None if healing is not None else healer
    collected = None
    with finite_activations(adapter):
        if "collector" in strategies:
            collected = collections.collect(plan, strategies["collector"], model, adapter, input_ids,
                                            reporter=reporter, timings=timings)
        inputs = collected.inputs if collected is not None else None
        context = RunContext(model, adapter, input_ids, tokenizer, seed,
                             forward_passes=inputs.forward_passes if inputs is not None else 0, inputs=inputs,
                             dense=KnownOutputs(PREVIEW_BYTES) if healer is not None else None)
        context.healing = _preview(healer, plan, model, adapter, input_ids, ids_for_healing, context, reporter)
        with stage("estimate", timings, reporter):
            if "scorer" in strategies:
                scores = strategies["scorer"].score(inputs, strategies.get("estimator"), context=context)
            else:
                scores = granularity.empty_scores(adapter)
        with stage("select", timings, reporter):
            selection = strategies["selector"].select(scores, count, context=context)
    granularity.check(selection, adapter, count)
    if context.healing is not None and getattr(selection, "info", None) is not None:
        preview = context.healing.info()
        if preview["cuts_fitted"] or preview["passes"]:  # consulted: a selector that judges no sets never asks
            selection.info["heal_preview"] = preview
    _release(context.healing, keep_dense=healer is not None)  # the heal may replay its dense outputs
    size = granularity.size(adapter)
    if healer is not None and heal_candidates > 1:
        selection = _heal_aware(selection, scores, count, heal_candidates, healer, model, adapter, ids_for_healing,
                                timings, reporter)
    plain_loss = None
    if healer is not None and judge is not None:  # part of the quality check's cost
        start = time.perf_counter()
        plain_loss = granularity.plain_loss(judge, adapter, selection)
        timings["check"] = round(timings.get("check", 0.0) + time.perf_counter() - start, 4)
    dense_parameters = count_parameters(model)
    if healer is not None:
        with stage("heal", timings, reporter), finite_activations(adapter):
            healing = healer.heal(model, adapter, granularity.heal_target(selection), ids_for_healing,
                                  **_known_dense(healer, context.dense))
        selection = granularity.healed(selection)
    _release(context.healing)
    if context.dense is not None:
        context.dense.clear()
    with stage("operate", timings, reporter):
        surgery = strategies["surgeon"].apply(model, adapter, selection)
    if "parameters_before" in surgery:  # the dense model's, not as healing left it (an untied head)
        surgery["parameters_before"] = dense_parameters
    if healing is not None:
        surgery["healing"] = healing
    return Outcome(
        plan=plan, count=count, size=size, scores=scores, selection=selection, surgery=surgery,
        collection=inputs.info if inputs is not None else None,
        collect_seconds=collected.seconds if collected is not None else 0.0,
        forward_passes=context.forward_passes, timings=timings, plain_loss=plain_loss,
    )


def _release(preview: Any, keep_dense: bool = False) -> None:
    """Free what a healing preview holds once nothing reads it (its optional ``release``): the
    selection's scores keep it referenced, and on a 262 144-token vocabulary it was most of the
    quality check's peak memory."""
    if preview is not None and hasattr(preview, "release"):
        preview.release(keep_dense=keep_dense)


def _known_dense(healer: Any, known: Any) -> dict[str, Any]:
    """``known=`` for a healer whose ``heal`` accepts it: the dense block outputs the run computed
    (:class:`~miprun.probing.KnownOutputs`: the healing preview's, the race's), so that healing
    does not recompute them."""
    if known is None or "known" not in inspect.signature(healer.heal).parameters:
        return {}
    return {"known": known}


def judges_healed(strategies: dict[str, Any]) -> bool:
    """Whether a plan's scorer judges healed block sets when the run heals (``output-mi``'s
    ``healed`` option, on by default): a healed run then selects differently from a plain one."""
    return bool(getattr(strategies.get("scorer"), "healed", False))


PREVIEW_ROWS_PER_INPUT = 4
"""Tokens a healing preview fits on per input of its widest fit (the FFN's width): a least-squares
fit on few rows per coefficient over-fits, and the preview then ranks block sets by its noise."""

PREVIEW_BYTES = 2 * 2**30
"""Memory for the dense block outputs a healing preview keeps (every block's, over its sequences),
which bounds how many sequences it fits on — and for those the run keeps for its heal to replay
(:class:`~miprun.probing.KnownOutputs`, mostly the same tensors)."""


def preview_sequences(model: Any, adapter: Any, input_ids: Any) -> int:
    """How many healing sequences a preview fits on: :data:`PREVIEW_ROWS_PER_INPUT` tokens per
    input of the FFN fit (4 × 1 536 for SmolLM2: 24 sequences of 256; 4 × 2 048 for Gemma 3 270M:
    32), within :data:`PREVIEW_BYTES` of dense block outputs, never fewer than the calibration
    sequences. Gemma 3 270M with 16 sequences chose a set that healed 22 % worse; with 32, 64 or 112
    the same, better set (docs/healing.md)."""
    from miprun.errors import MiprunError

    hidden = adapter.hidden_size
    try:
        width = max(hidden, adapter.ffn_width(0))
    except (MiprunError, AttributeError, TypeError):  # no FFN the adapter can read (experts): the hidden size
        width = hidden
    samples, seq_len = (int(d) for d in input_ids.shape[:2])
    wanted = -(-PREVIEW_ROWS_PER_INPUT * width // seq_len)
    per_sequence = adapter.num_blocks * seq_len * hidden * next(model.parameters()).element_size()
    return max(samples, min(wanted, PREVIEW_BYTES // per_sequence))


def _preview(healer: Any, plan: Any, model: Any, adapter: Any, input_ids: Any, heal_ids: Any, context: Any,
             reporter: Reporter) -> Any:
    """The healer's preview for scoring healed block sets (:class:`~miprun.contracts.HealingPreview`),
    fitted on healing sequences that are not calibration sequences — as many as
    :func:`preview_sequences` asks, where there are — so that what the scores judge is held out
    from the fits. None when the run does not heal blocks, the healer offers no preview, the model
    runs layer-wise, or every healing sequence is a calibration one."""
    import torch

    from miprun.models.layerwise import layerwise_loader

    if healer is None or plan.granularity != "block" or not hasattr(healer, "preview") \
            or heal_ids.shape[1:] != input_ids.shape[1:]:
        return None
    if layerwise_loader(model) is not None:
        reporter.note("the selection judges plain removal: previewing the healed model needs it in memory")
        return None
    seen = {tuple(row.tolist()) for row in input_ids}
    rows = [row for row in heal_ids if tuple(row.tolist()) not in seen][: preview_sequences(model, adapter, input_ids)]
    if not rows:
        if reporter is not None:
            reporter.note("the selection judges plain removal: every healing sequence is also a calibration "
                          "sequence, so none is left to fit a preview on; raise --heal-samples")
        return None
    return healer.preview(model, adapter, torch.stack(rows), context=context)


def healer_refusal(healer: Any, adapter: Any) -> str | None:
    """Why ``healer`` cannot heal ``adapter``'s architecture (its ``check``'s one line), or None
    when it can (or declares no check)."""
    from miprun.errors import MiprunError

    check = getattr(healer, "check", None)
    try:
        if check is not None:
            check(adapter)
    except MiprunError as exc:
        return str(exc)
    return None


def _healability(healer: Any, adapter: Any, reporter: Reporter) -> dict[str, Any] | None:
    """None when ``healer`` can heal ``adapter``'s architecture, else the record of why healing
    was skipped (the one line is also reported as a note)."""
    refusal = healer_refusal(healer, adapter)
    if refusal is None:
        return None
    reason = f"not healed: {refusal}"
    reporter.note(reason)
    return {"skipped": reason}


def _heal_aware(selection: Any, scores: Any, count: int, limit: int, healer: Any, model: Any, adapter: Any,
                heal_ids: Any, timings: dict[str, float], reporter: Reporter) -> Any:
    """The selection replaced by the candidate set that heals best: the selection itself and the
    next best ``count``-block sets its scores evaluated (the screen's when there is one)."""
    from dataclasses import replace

    from miprun.healing import heal_aware_choice

    candidates = [sorted(int(b) for b in selection.blocks)]
    for _, blocks in scores.ranking.best_sets(count):
        if len(candidates) >= limit:
            break
        if sorted(blocks) not in candidates:
            candidates.append(sorted(blocks))
    with stage("heal-select", timings, reporter), finite_activations(adapter):
        chosen, record = heal_aware_choice(healer, model, adapter, candidates, heal_ids)
    record["selected_before"] = candidates[0]
    return replace(selection, blocks=chosen, info={**selection.info, "heal_aware": record})
