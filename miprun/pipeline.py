"""The pruning pipeline: load → calibrate → collect → score → select → operate → save.

:func:`prune` composes the five strategy kinds by name. The CLI's ``miprun run`` is a thin shell
over it, so everything the command does is available from Python::

    import miprun
    result = miprun.prune("smollm2-135m", n=6, output="pruned/smollm2-6")
    result.selection.blocks

``granularity="block"`` (the default) removes whole blocks; ``granularity="neuron"`` hands the run
to :mod:`miprun.neuron_pipeline`, which removes FFN neurons with the same stage helpers defined
here (:func:`load_stage`, :func:`calibrate_stage`, :func:`finish_run`, …). Every strategy declares
the granularity it works at (a ``granularity`` class attribute, ``"block"`` when absent);
:func:`check_granularity` turns a mismatch into one clear line.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from miprun.errors import MiprunError, did_you_mean
from miprun.models.embedded import DEFAULT_MODEL
from miprun.registry import Registry, get_registry
from miprun.strategies import RunContext, call_with_context

DEFAULT_ESTIMATOR = "gaussian-channel"
"""Estimator used when the scorer needs one and none is named (see docs/estimators.md)."""

MI_SCORERS = ("block-mi", "output-mi")
"""Block scorers built on an MI estimator; without a named selector they run Fast-Block-Select."""

GRANULARITIES = ("block", "neuron")
"""What a run removes: whole blocks (depth) or FFN neurons (width)."""


def strategy_granularities(factory: Any) -> tuple[str, ...]:
    """The granularities a strategy (its factory or an instance) works at: its ``granularity``
    attribute, a string or a tuple of strings, ``("block",)`` when it declares none."""
    value = getattr(factory, "granularity", "block")
    return (value,) if isinstance(value, str) else tuple(value)


def check_granularity_choice(granularity: str) -> str:
    """Return ``granularity`` if it is one of :data:`GRANULARITIES`, else a one-line error."""
    if granularity not in GRANULARITIES:
        raise MiprunError(
            f"unknown granularity '{granularity}'{did_you_mean(str(granularity), list(GRANULARITIES))}; "
            f"choose one of: {', '.join(GRANULARITIES)}"
        )
    return granularity


def names_at(registry: Registry, kind: str, granularity: str) -> list[str]:
    """Sorted names of the strategies of ``kind`` that work at ``granularity``."""
    return [
        name for name in registry.names(kind)
        if granularity in strategy_granularities(_factory_or_none(registry.get(kind, name)))
    ]


def _factory_or_none(entry: Any) -> Any:
    try:
        return entry.load_factory()
    except MiprunError:
        return None


def check_granularity(registry: Registry, kind: str, name: str, granularity: str) -> str:
    """Return the registered name of ``kind`` to use for ``name`` at ``granularity``.

    An unknown name is an error listing the choices *at this granularity*. A name whose strategy
    works at another granularity is read as ``<granularity>-<name>`` when such a strategy is
    registered (so ``--estimator renyi --granularity neuron`` means ``neuron-renyi``); otherwise it
    is a one-line error naming the flag to change.
    """
    alias = f"{granularity}-{name}"
    if name not in registry.names(kind):
        if alias in registry.names(kind) and granularity in strategy_granularities(registry.get(kind, alias).load_factory()):
            return alias
        choices = names_at(registry, kind, granularity)
        raise MiprunError(
            f"unknown {kind} '{name}'{did_you_mean(name, choices)}; valid choices: {', '.join(choices)}"
        )
    supported = strategy_granularities(registry.get(kind, name).load_factory())
    if granularity in supported:
        return name
    if alias in registry.names(kind) and granularity in strategy_granularities(registry.get(kind, alias).load_factory()):
        return alias
    other = supported[0] if supported else "block"
    choices = names_at(registry, kind, granularity)
    raise MiprunError(
        f"{kind} '{name}' works at {other} granularity, not {granularity}; pass --granularity {other} "
        f"or choose a {granularity} {kind}: {', '.join(choices) or 'none installed'}"
    )


class Reporter:
    """Progress callbacks; the default does nothing. The CLI passes a rich implementation."""

    def start(self, stage: str, total: int | None = None) -> None:
        """A stage begins; ``total`` units of work follow (None when unknown)."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` units of the current stage are done."""

    def finish(self, stage: str, seconds: float) -> None:
        """A stage ended after ``seconds``."""


@dataclass
class PruneResult:
    """Everything a run produced: the pruned model in memory, the selection, scores and report."""

    model: Any
    tokenizer: Any
    adapter: Any
    selection: Any
    scores: Any
    report: dict[str, Any]
    output: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Plan:
    """The strategies of one run, resolved by name with their options."""

    names: dict[str, str]
    options: dict[str, dict[str, Any]]

    def describe(self, registry: Registry) -> dict[str, Any]:
        """Name, effective options (the factory's defaults overridden by the run's) and providing
        plugin of every strategy in the plan, so a report stays exact when a default changes."""
        described = {}
        for kind, name in self.names.items():
            entry = registry.get(kind, name)
            options = {**entry.defaults(), **self.options.get(kind, {})}
            described[kind] = {"name": name, "options": options, "provider": entry.provider}
        return described


def resolve_plan(
    *,
    collector: str = "hidden-states",
    estimator: str | None = None,
    scorer: str | None = None,
    selector: str | None = None,
    surgeon: str = "remove-blocks",
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    registry: Registry | None = None,
) -> Plan:
    """Fill in defaults and check every name before any work starts.

    Without a scorer, an MI-PRUN selector (one whose class sets ``default_scorer``, e.g.
    ``fast-block-select``) selects its scorer (``output-mi``); else naming an estimator selects
    ``block-mi``; else the scorer is ``block-influence`` (ShortGPT). Without a selector, the MI
    scorers use ``fast-block-select`` and other scorers ``greedy``. A scorer that needs an
    estimator and gets none uses :data:`DEFAULT_ESTIMATOR`. Strategies that take a ``seed``
    option get the run's seed unless it is set explicitly.
    """
    registry = registry or get_registry()
    collector = check_granularity(registry, "collector", collector, "block")
    if estimator is not None:
        estimator = check_granularity(registry, "estimator", estimator, "block")
    if selector is not None:
        selector = check_granularity(registry, "selector", selector, "block")
    if scorer is None:
        implied = getattr(registry.get("selector", selector).load_factory(), "default_scorer", None) if selector else None
        scorer = implied or ("block-mi" if estimator else "block-influence")
    scorer = check_granularity(registry, "scorer", scorer, "block")
    surgeon = check_granularity(registry, "surgeon", surgeon, "block")
    names = {"collector": collector, "scorer": scorer}
    scorer_entry = registry.get("scorer", scorer)
    if estimator is None and "estimator" in (options or {}):
        estimator = DEFAULT_ESTIMATOR
    if estimator is not None or getattr(scorer_entry.load_factory(), "needs_estimator", False):
        names["estimator"] = estimator or DEFAULT_ESTIMATOR
    names["selector"] = selector or ("fast-block-select" if scorer in MI_SCORERS else "greedy")
    names["surgeon"] = surgeon
    return plan_with_options(registry, names, options, seed)


def plan_with_options(
    registry: Registry, names: dict[str, str], options: dict[str, dict[str, Any]] | None, seed: int
) -> Plan:
    """A :class:`Plan` of the checked strategy ``names`` with their ``options``; strategies that take
    a ``seed`` get the run's seed unless it is set explicitly. Options for a kind the run does not
    use are an error."""
    resolved: dict[str, dict[str, Any]] = {}
    for kind, name in names.items():
        opts = dict((options or {}).get(kind, {}))
        if "seed" in registry.get(kind, name).options() and "seed" not in opts:
            opts["seed"] = seed
        resolved[kind] = opts
    unknown = set(options or {}) - set(names)
    if unknown:
        raise MiprunError(f"options given for {', '.join(sorted(unknown))}, which this run does not use")
    return Plan(names, resolved)


def blocks_to_remove(total: int, n: int | None, ratio: float | None) -> int:
    """Number of blocks to remove from ``n`` or ``ratio`` (default ratio 0.2), checked against ``total``."""
    if n is not None and ratio is not None:
        raise MiprunError("give either --prune N or --ratio r, not both")
    if n is None:
        ratio = 0.2 if ratio is None else ratio
        if not 0 < ratio < 1:
            raise MiprunError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
        n = max(1, round(ratio * total))
    if n < 1:
        raise MiprunError(f"--prune must be at least 1, got {n}")
    if n >= total:
        raise MiprunError(f"--prune {n} would remove every block: the model has {total} blocks; choose at most {total - 1}")
    return n


@contextmanager
def stage(name: str, timings: dict[str, float], reporter: Reporter, total: int | None = None) -> Iterator[None]:
    """Time one pipeline stage into ``timings[name]`` and report its start and end."""
    reporter.start(name, total)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 4)
    reporter.finish(name, timings[name])


_stage = stage  # the name used before the stage helpers were shared


def default_output(model: str, plan: Plan, n: int) -> Path:
    """``pruned/<model>-<scorer>-<selector>-minus<N>`` in the current directory."""
    slug = model_slug(model)
    return Path("pruned") / f"{slug}-{plan.names['scorer']}-{plan.names['selector']}-minus{n}"


def model_slug(model: str) -> str:
    """The last path component of a model name, without ``.gguf``, safe as a directory name."""
    return Path(model.rstrip("/")).name.removesuffix(".gguf").replace("/", "-")


# ------------------------------------------------------------------ stage helpers (shared with neuron_pipeline)


def load_stage(model: Any, *, dtype: str, device_map: str | None, timings: dict[str, float], reporter: Reporter) -> Any:
    """Load ``model`` (a name/path, or an already loaded :class:`~miprun.models.loading.LoadedModel`)."""
    from miprun.models.loading import LoadedModel, load_model

    with stage("load", timings, reporter):
        return model if isinstance(model, LoadedModel) else load_model(str(model), dtype=dtype, device_map=device_map)


def calibrate_stage(
    loaded: Any, *, calib: str, num_samples: int, seq_len: int, seed: int, timings: dict[str, float], reporter: Reporter
) -> Any:
    """Draw the calibration token windows (seeded) for ``loaded``."""
    import torch

    from miprun.data.calibration import load_calibration

    torch.manual_seed(seed)
    with stage("calibrate", timings, reporter):
        return load_calibration(
            calib, loaded.tokenizer, num_samples=num_samples, seq_len=seq_len, seed=seed, model=loaded.model
        )


def base_report(loaded: Any, calibration: Any, *, seed: int, plan: Plan, registry: Registry) -> dict[str, Any]:
    """The report fields every run has: model, data, seed and strategies (with their providers)."""
    return {
        "miprun_report_version": 1,
        "model": loaded.source,
        "model_type": loaded.adapter.model_type,
        "data": calibration.source,
        "seed": seed,
        "strategies": plan.describe(registry),
    }


def finish_run(
    result: PruneResult,
    *,
    evaluate: dict[str, Any] | None,
    save: bool,
    out_path: Path,
    overwrite: bool,
    reporter: Reporter,
) -> PruneResult:
    """Evaluate the pruned model (optional), add versions and timings to the report, and save the
    checkpoint with ``miprun_report.json`` atomically (when ``save``)."""
    from miprun.output import save_checkpoint
    from miprun.provenance import versions

    report, timings = result.report, result.timings
    report["timings"] = timings
    report["versions"] = versions()
    if evaluate:
        from miprun.evaluation import evaluate as run_evaluation

        with stage("evaluate", timings, reporter):
            report["evaluation"] = run_evaluation(result.model, result.tokenizer, **evaluate)
    if save:
        with stage("save", timings, reporter):
            result.output = save_checkpoint(result.model, result.tokenizer, out_path, report, overwrite=overwrite)
    return result


def prune(
    model: Any = DEFAULT_MODEL,
    *,
    n: int | None = None,
    ratio: float | None = None,
    calib: str = "wikitext2",
    num_samples: int = 16,
    seq_len: int = 256,
    seed: int = 0,
    granularity: str = "block",
    collector: str | None = None,
    estimator: str | None = None,
    scorer: str | None = None,
    selector: str | None = None,
    surgeon: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    output: str | Path | None = None,
    save: bool = True,
    overwrite: bool = False,
    dtype: str = "auto",
    device_map: str | None = None,
    evaluate: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> PruneResult:
    """Prune ``model`` (a name/path/hub id, or a :class:`miprun.models.loading.LoadedModel`).

    :param n: blocks to remove; or ``ratio`` of blocks (default 0.2 when neither is given). At
        neuron granularity: FFN neurons to remove from every layer, or the ratio of each layer's.
    :param calib: calibration source (see :mod:`miprun.data.calibration`).
    :param granularity: ``"block"`` (remove blocks) or ``"neuron"`` (remove FFN neurons; see
        :func:`miprun.neuron_pipeline.prune_neurons` for its defaults).
    :param collector: default ``hidden-states`` (block) / ``ffn-activations`` (neuron).
    :param surgeon: default ``remove-blocks`` (block) / ``slice-ffn`` (neuron).
    :param options: per-kind strategy options, e.g. ``{"estimator": {"alpha": 2}}``.
    :param output: checkpoint directory; default ``pruned/<model>-<scorer>-<selector>-minus<N>``.
    :param save: write the checkpoint and report (False keeps the result in memory only).
    :param evaluate: keyword arguments for :func:`miprun.evaluation.evaluate`, run on the pruned
        model before saving; its results go into the report.
    """
    if check_granularity_choice(granularity) == "neuron":
        from miprun.neuron_pipeline import prune_neurons

        return prune_neurons(
            model, n=n, ratio=ratio, calib=calib, num_samples=num_samples, seq_len=seq_len, seed=seed,
            collector=collector, estimator=estimator, scorer=scorer, selector=selector, surgeon=surgeon,
            options=options, output=output, save=save, overwrite=overwrite, dtype=dtype, device_map=device_map,
            evaluate=evaluate, reporter=reporter,
        )
    from miprun.output import check_output

    reporter = reporter or Reporter()
    registry = get_registry()
    plan = resolve_plan(
        collector=collector or "hidden-states", estimator=estimator, scorer=scorer, selector=selector,
        surgeon=surgeon or "remove-blocks", options=options, seed=seed, registry=registry,
    )
    if output is not None and save:
        check_output(Path(output), overwrite=overwrite)
    strategies = {kind: registry.create(kind, name, **plan.options[kind]) for kind, name in plan.names.items()}
    timings: dict[str, float] = {}

    loaded = load_stage(model, dtype=dtype, device_map=device_map, timings=timings, reporter=reporter)
    model_name = loaded.source.get("spec", str(model))
    total = loaded.adapter.num_blocks
    count = blocks_to_remove(total, n, ratio)
    out_path = Path(output) if output is not None else default_output(model_name, plan, count)
    if save:
        check_output(out_path, overwrite=overwrite)

    calibration = calibrate_stage(loaded, calib=calib, num_samples=num_samples, seq_len=seq_len, seed=seed,
                                  timings=timings, reporter=reporter)
    with stage("collect", timings, reporter, total=num_samples):
        states = strategies["collector"].collect(
            loaded.model, loaded.adapter, calibration.input_ids, progress=reporter.advance
        )
    context = RunContext(loaded.model, loaded.adapter, calibration.input_ids, loaded.tokenizer, seed,
                         forward_passes=states.forward_passes)
    with stage("estimate", timings, reporter):
        scores = call_with_context(strategies["scorer"].score, states, strategies.get("estimator"), context=context)
    with stage("select", timings, reporter):
        selection = call_with_context(strategies["selector"].select, scores, count, context=context)
    with stage("operate", timings, reporter):
        surgery = strategies["surgeon"].apply(loaded.model, loaded.adapter, selection.blocks)

    report = base_report(loaded, calibration, seed=seed, plan=plan, registry=registry)
    report.update({
        "granularity": "block",
        "prune": {"requested": count, "of_blocks": total},
        "selected_blocks": selection.blocks,
        "block_scores": {"metric": scores.metric, "redundant_when_high": scores.redundant_when_high,
                         "values": [scores.value(i) for i in range(total)],
                         "importance": scores.singles()},
        "span_table": scores.table(),
        "set_table": scores.set_table(),
        "evaluations": {"spans": scores.evaluations, "mi": scores.evaluations if scores.metric == "mi" else 0,
                        "selector": selection.evaluations, "forward_passes": context.forward_passes},
        "collection": states.info,
        "selection": {"trace": selection.trace, "info": selection.info},
        "surgery": surgery,
    })
    result = PruneResult(loaded.model, loaded.tokenizer, loaded.adapter, selection, scores, report, timings=timings)
    return finish_run(result, evaluate=evaluate, save=save, out_path=out_path, overwrite=overwrite, reporter=reporter)
