"""Head-to-head comparison of pruning methods on one model, one calibration sample, one protocol.

:func:`compare` loads the model once, draws one calibration sample, then for every method (and
every depth in curve mode) runs the method's plan through the engine (:func:`miprun.engine.execute`)
on a fresh deep copy of the model and evaluates it with :func:`miprun.evaluation.evaluate`. Methods
are named methods or combinations (:mod:`miprun.methods`), so a plugin's strategies are compared like
built-ins. Collected inputs are shared: each distinct collector runs once, before the first method.
The dense model is the first row. ``miprun compare`` is a thin shell over it::

    from miprun.compare import compare
    report = compare("smollm2-135m", prune=6, methods=["mi-prun", "shortgpt", "linear-cka+greedy"])
    report["rows"][1]["blocks"], report["rows"][1]["perplexity"]["wikitext2"]

Cost accounting (``row["cost"]``):

* ``seconds`` — wall time of the method's pruning (scoring, selection, surgery), plus the shared
  collection for methods that read collected states; evaluation is not included.
* ``forward_passes`` — passes over the whole calibration set (1 for the collection, plus whatever
  the strategies run through :mod:`miprun.probing`).
* ``mi_evaluations`` — distinct span MI estimates (MI-based scorers only); ``span_evaluations`` —
  distinct span scores of any kind.
* ``peak_memory_mb`` — the peak increase of resident memory (CPU) or of allocated GPU memory over
  its level when the method started (its deep copy already made; :class:`miprun.memory.PeakMemory`).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from miprun.errors import MiprunError
from miprun.memory import PeakMemory, release_freed_memory
from miprun.methods import DEFAULT_METHODS, Method, parse_methods
from miprun.models.devices import input_device
from miprun.plotting import DENSE


def parse_depths(prune: int | str | Sequence[int]) -> list[int]:
    """``6`` → [6]; ``"2,4,6"`` → [2, 4, 6] (sorted, distinct, each ≥ 1)."""
    if isinstance(prune, int):
        values = [prune]
    elif isinstance(prune, str):
        try:
            values = [int(p) for p in prune.split(",") if p.strip()]
        except ValueError as exc:
            raise MiprunError(f"--prune takes a number or a comma list of numbers, got '{prune}'") from exc
    elif isinstance(prune, Sequence) and all(isinstance(p, int) and not isinstance(p, bool) for p in prune):
        values = list(prune)
    else:
        raise MiprunError(f"--prune takes a number or a comma list of numbers, got {prune!r}")
    if not values or any(v < 1 for v in values):
        raise MiprunError(f"--prune needs block counts ≥ 1, got {prune!r}")
    return sorted(set(values))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _evaluation_fields(evaluation: dict[str, Any]) -> dict[str, Any]:
    perplexity = {name: r.get("perplexity") for name, r in evaluation.get("perplexity", {}).items()}
    tasks = {name: r.get("acc") for name, r in evaluation.get("tasks", {}).items()}
    return {"perplexity": perplexity, "tasks": tasks, "task_average": evaluation.get("task_average")}


def compare(
    model: Any = None,
    *,
    prune: int | str | Sequence[int] = 6,
    methods: str | Sequence[str | Method] = DEFAULT_METHODS,
    calib: str = "wikitext2",
    num_samples: int = 16,
    seq_len: int = 256,
    seed: int = 0,
    ppl: Sequence[str] = ("wikitext2",),
    tasks: Sequence[str] | str = (),
    limit: int | float | None = None,
    eval_seq_len: int | None = None,
    eval_max_windows: int | None = None,
    eval_batch_size: int = 1,
    options: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    dtype: str = "auto",
    device_map: str | None = None,
    log: Callable[[str], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    heal: str | None = None,
    heal_samples: int = 128,
    reporter: Any = None,
) -> dict[str, Any]:
    """Prune ``model`` with every method in ``methods`` at every depth in ``prune`` and evaluate each.

    :param model: embedded name, checkpoint directory, hub id, or a
        :class:`~miprun.models.loading.LoadedModel` (never modified: each method prunes a deep copy).
    :param prune: blocks to remove — one number, or several (curve mode).
    :param methods: named methods or combinations ``SCORER[:ESTIMATOR]+SELECTOR[+SURGEON]``
        (:func:`miprun.methods.parse_method`), as a comma list or a sequence.
    :param ppl: perplexity data sets; ``tasks``/``limit``: lm-eval tasks (see
        :func:`miprun.evaluation.evaluate`).
    :param eval_seq_len: perplexity window; ``eval_max_windows``: only the first N windows.
    :param options: per-method strategy options ``{method: {kind: {key: value}}}``.
    :param log: called with one line per finished step (progress for the CLI).
    :param reporter: progress (:class:`miprun.progress.Reporter`): one stage per method and depth
        (``shortgpt -6``, ``shortgpt+heal -6``) and one for the dense row, so that a comparison in a
        log prints start, running and done lines between rows.
    :param on_row: called with the report so far (``"complete": False``) after every row, so that a
        long comparison that is interrupted still leaves its finished rows behind.
    :param heal: the healer (a registered name), ``"none"``, or None for each plan's default
        (:mod:`miprun.plans`, rule 7). A method whose plan has a healer gets, beside its plain row,
        a row ``METHOD+heal`` for the same blocks removed after healing (fitted on ``heal_samples``
        sequences of the same source and seed); methods whose surgeon is not healed (LaCo), or an
        architecture the healer refuses, get the plain row only.
    :returns: ``{"model", "num_blocks", "settings", "rows", "complete", "seconds"}``; ``rows[0]`` is the
        dense model, then one row per method and depth with ``method``, ``prune``, ``blocks``,
        ``perplexity``, ``tasks``, ``task_average``, ``cost``, ``strategies``, ``selection``.
    """
    import torch

    from miprun.data.calibration import check_calibration, load_calibration
    from miprun.engine import Collections, execute, healer_refusal, judges_healed, preview_sequences
    from miprun.evaluation import evaluate
    from miprun.evaluation.lm_eval_bridge import check_task_names, parse_tasks
    from miprun.evaluation.perplexity import check_dataset
    from miprun.granularity import blocks_to_remove
    from miprun.models.adapters import adapter_for
    from miprun.models.embedded import DEFAULT_MODEL
    from miprun.models.loading import LoadedModel, load_model
    from miprun.options import check_arguments
    from miprun.progress import Reporter, stage
    from miprun.registry import get_registry

    checked = check_arguments("compare", {
        "calib": (calib, "path"), "num_samples": (num_samples, "int"),
        "seq_len": (seq_len, "int"), "seed": (seed, "int"), "ppl": (ppl, "names"), "tasks": (tasks, "names"),
        "limit": (limit, "number"), "eval_seq_len": (eval_seq_len, "int"), "eval_max_windows": (eval_max_windows, "int"),
        "eval_batch_size": (eval_batch_size, "int"), "options": (options, "mapping"), "dtype": (dtype, "text"),
        "heal": (heal, "text"), "heal_samples": (heal_samples, "int"),
    }, optional=("limit", "eval_seq_len", "eval_max_windows", "options", "heal"))
    num_samples, seq_len, seed, limit, eval_seq_len, eval_max_windows, eval_batch_size, heal_samples = (checked[name] for name in (
        "num_samples", "seq_len", "seed", "limit", "eval_seq_len", "eval_max_windows", "eval_batch_size", "heal_samples"))
    if model is not None and not isinstance(model, (str, os.PathLike, LoadedModel)):
        raise MiprunError(f"compare(): model must be a name, a path, a hub id or a LoadedModel, got {model!r}")
    calib = str(calib)
    ppl = tuple(name.strip() for name in ppl.split(",") if name.strip()) if isinstance(ppl, str) else tuple(ppl)
    log = log or (lambda line: None)
    reporter = reporter or Reporter()
    registry = get_registry()
    specs = parse_methods(methods, registry)
    names = [spec.name for spec in specs]
    depths = parse_depths(prune)
    options = dict(options or {})
    unknown = set(options) - set(names)
    if unknown:
        raise MiprunError(f"options given for {', '.join(sorted(unknown))}, which is not among the compared methods "
                          f"({', '.join(names)})")
    plans = {spec.name: _plan(spec, {k: dict(v) for k, v in options.get(spec.name, {}).items()}, heal, seed, registry)
             for spec in specs}
    for plan in plans.values():  # every option value is checked before any work starts
        plan.build(registry)
    if isinstance(heal_samples, bool) or not isinstance(heal_samples, int) or heal_samples < 1:
        raise MiprunError(f"--heal-samples must be a whole number ≥ 1, got {heal_samples!r}")
    healing = any("healer" in plan.names for plan in plans.values())
    check_calibration(calib, num_samples=num_samples, seq_len=seq_len)
    for name in ppl:
        check_dataset(name)
    check_task_names(parse_tasks(tasks))

    started = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(str(model or DEFAULT_MODEL), dtype=dtype, device_map=device_map)
    total = loaded.adapter.num_blocks
    for n in depths:
        blocks_to_remove(total, n, None)
    device = input_device(loaded.model)
    log(f"loaded {loaded.source.get('spec', model)} ({total} blocks) in {time.perf_counter() - started:.1f}s")

    torch.manual_seed(seed)
    calibration = load_calibration(calib, loaded.tokenizer, num_samples=num_samples, seq_len=seq_len, seed=seed, model=loaded.model)
    input_ids = calibration.input_ids
    heal_ids = None
    if healing:
        heal_ids = load_calibration(calib, loaded.tokenizer, num_samples=heal_samples, seq_len=seq_len, seed=seed,
                                    model=loaded.model, apart_from=calibration,
                                    apart_count=preview_sequences(loaded.model, loaded.adapter, input_ids)).input_ids
    collections = Collections()
    for plan in plans.values():  # collect once per distinct collector, outside every method's measurement
        if "collector" in plan.names:
            collector = registry.create("collector", plan.names["collector"], **plan.options["collector"])
            done = collections.collect(plan, collector, loaded.model, loaded.adapter, input_ids, reporter=_quiet(), timings={})
            log(f"collected with {plan.names['collector']} ({done.inputs.info.get('tokens')} tokens) in {done.seconds:.1f}s")

    def run_eval(target: Any, adapter: Any) -> dict[str, Any]:
        if not ppl and not tasks:
            return {}
        return evaluate(target, loaded.tokenizer, ppl=tuple(ppl), tasks=tasks, limit=limit, seq_len=eval_seq_len,
                        max_windows=eval_max_windows, batch_size=eval_batch_size, adapter=adapter, progress=False)

    with stage("dense", {}, reporter):
        dense_eval = run_eval(loaded.model, loaded.adapter)
    rows: list[dict[str, Any]] = [{
        "method": DENSE, "prune": 0, "blocks": [], **_evaluation_fields(dense_eval),
        "cost": {"seconds": 0.0, "forward_passes": 0, "mi_evaluations": 0, "span_evaluations": 0, "peak_memory_mb": 0.0},
        "strategies": {}, "selection": {}, "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }]
    log(f"dense: {_brief(rows[0])}")

    def report(complete: bool) -> dict[str, Any]:
        return {
            "model": {k: v for k, v in loaded.source.items() if isinstance(v, (str, int, float, bool)) or v is None},
            "num_blocks": total,
            "settings": {
                "prune": depths, "methods": names, "calib": calibration.source, "num_samples": num_samples,
                "seq_len": seq_len, "seed": seed, "ppl": list(ppl),
                "heal": {name: plan.names.get("healer", "none") for name, plan in plans.items()},
                "heal_samples": heal_samples if healing else None,
                "tasks": list(tasks) if not isinstance(tasks, str) else tasks,
                "limit": limit, "eval_seq_len": eval_seq_len, "eval_max_windows": eval_max_windows,
                "collection": {name: {"seconds": c.seconds, **{k: v for k, v in c.inputs.info.items()
                                                              if isinstance(v, (int, float, str, bool))}}
                               for (name, _), c in collections.store.items()},
                "device": str(device),
                "methods_described": {spec.name: {"plan": plans[spec.name].names, "description": spec.description}
                                      for spec in specs},
            },
            "rows": list(rows),
            "complete": complete,
            "seconds": round(time.perf_counter() - started, 3),
        }

    if on_row is not None:
        on_row(report(False))

    for spec in specs:
        plan = plans[spec.name]
        for n in depths:
            strategies = plan.build(registry)
            healer = strategies.pop("healer", None)  # the plain row first; the healed row beside it
            release_freed_memory()
            working = copy.deepcopy(loaded.model)
            adapter = adapter_for(working)
            torch.manual_seed(seed)
            with stage(f"{spec.name} -{n}", {}, reporter):
                with PeakMemory(device) as memory:
                    outcome = execute(plan, working, adapter, input_ids, count=n, tokenizer=loaded.tokenizer,
                                      seed=seed, strategies=strategies, collections=collections, registry=registry)
                evaluation = run_eval(working, adapter)
            info = {k: v for k, v in outcome.selection.info.items()
                    if isinstance(v, (int, float, str, bool, list, dict)) or v is None}
            scores = outcome.scores
            row = {
                "method": spec.name,
                "prune": n,
                "blocks": sorted(int(b) for b in outcome.selection.blocks),
                **_evaluation_fields(evaluation),
                "cost": {
                    "seconds": round(outcome.seconds, 3),
                    "forward_passes": outcome.forward_passes,
                    "mi_evaluations": scores.evaluations if scores.metric == "mi" else 0,
                    "span_evaluations": scores.evaluations,
                    "peak_memory_mb": memory.peak_mb,
                },
                "strategies": plan.describe(registry),
                "selection": _json_safe(info),
                "parameters": outcome.surgery.get("parameters_after"),
            }
            if "merges" in outcome.surgery:
                row["merges"] = outcome.surgery["merges"]
            rows.append(row)
            log(f"{spec.name} -{n}: {_brief(row)}")
            if on_row is not None:
                on_row(report(False))
            del working, adapter
            skipped = healer_refusal(healer, loaded.adapter) if healer is not None else None
            if skipped:
                log(f"{spec.name} -{n}: not healed: {skipped}")
            elif healer is not None:
                with stage(f"{spec.name}+heal -{n}", {}, reporter):
                    if judges_healed(strategies):  # the healed row is the run's own: selected for healing
                        rows.append(_heal_aware_row(row, plan, n, healer, loaded, input_ids, heal_ids, seed,
                                                    registry, run_eval))
                    else:
                        rows.append(_healed_row(row, outcome, strategies, healer, loaded, heal_ids, run_eval))
                log(f"{rows[-1]['method']} -{n}: {_brief(rows[-1])}")
                if on_row is not None:
                    on_row(report(False))
            del outcome, scores, strategies
    release_freed_memory()
    return report(True)


def _plan(spec: Any, options: dict[str, dict[str, Any]], heal: str | None, seed: int, registry: Any) -> Any:
    """The plan of one compared method: with the named healer where it heals the method's surgeon,
    plain otherwise (a comparison names one healer for methods whose surgery differs)."""
    from miprun.plans import NO_HEALING, resolve_plan

    if heal not in (None, NO_HEALING):
        surgeon = resolve_plan(method=spec, options=options, healer=NO_HEALING, seed=seed, registry=registry).names["surgeon"]
        if surgeon not in registry.get("healer", heal).capabilities.heals:
            heal = NO_HEALING
    return resolve_plan(method=spec, options=options, healer=heal, seed=seed, registry=registry)


def _healed_row(row: dict[str, Any], outcome: Any, strategies: dict[str, Any], healer: Any, loaded: Any,
                heal_ids: Any, run_eval: Callable[[Any, Any], dict[str, Any]]) -> dict[str, Any]:
    """The row of ``row``'s selection removed after healing, on a fresh copy of the model."""
    from miprun.models.adapters import adapter_for

    release_freed_memory()
    healed = copy.deepcopy(loaded.model)
    adapter = adapter_for(healed)
    start = time.perf_counter()
    summary = healer.heal(healed, adapter, row["blocks"], heal_ids)
    seconds = time.perf_counter() - start
    surgery = strategies["surgeon"].apply(healed, adapter, outcome.selection)
    evaluation = run_eval(healed, adapter)
    return {
        **row,
        "method": f"{row['method']}+heal",
        **_evaluation_fields(evaluation),
        "cost": {**row["cost"], "seconds": round(row["cost"]["seconds"] + seconds, 3),
                 "heal_seconds": round(seconds, 3)},
        "healing": summary,
        "parameters": surgery.get("parameters_after"),
    }


def _heal_aware_row(row: dict[str, Any], plan: Any, n: int, healer: Any, loaded: Any, input_ids: Any, heal_ids: Any,
                    seed: int, registry: Any, run_eval: Callable[[Any, Any], dict[str, Any]]) -> dict[str, Any]:
    """The healed row of a method whose scorer judges healed sets: the run ``miprun run`` makes —
    selected for the healed model, healed, removed — on a fresh copy; ``plain_blocks`` keeps the
    plain row's selection beside it."""
    import torch

    from miprun.engine import execute
    from miprun.models.adapters import adapter_for

    release_freed_memory()
    healed = copy.deepcopy(loaded.model)
    adapter = adapter_for(healed)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    outcome = execute(plan, healed, adapter, input_ids, count=n, tokenizer=loaded.tokenizer, seed=seed,
                      strategies={**plan.build(registry), "healer": healer}, registry=registry, timings=timings,
                      heal_ids=heal_ids)
    evaluation = run_eval(healed, adapter)
    return {
        **row,
        "method": f"{row['method']}+heal",
        "blocks": sorted(int(b) for b in outcome.selection.blocks),
        "plain_blocks": row["blocks"],
        **_evaluation_fields(evaluation),
        "cost": {**row["cost"], "seconds": round(outcome.seconds, 3), "forward_passes": outcome.forward_passes,
                 "heal_seconds": round(timings["heal"], 3)},
        "selection": _json_safe({k: v for k, v in outcome.selection.info.items()
                                 if isinstance(v, (int, float, str, bool, list, dict)) or v is None}),
        "healing": outcome.surgery.get("healing"),
        "parameters": outcome.surgery.get("parameters_after"),
    }


def _quiet() -> Any:
    from miprun.progress import Reporter

    return Reporter()


def _brief(row: dict[str, Any]) -> str:
    ppl_text = ", ".join(f"ppl {k} {v:.2f}" for k, v in row["perplexity"].items() if isinstance(v, (int, float)))
    cost = row["cost"]
    return (f"blocks {row['blocks']} {ppl_text} | {cost['seconds']:.1f}s, {cost['forward_passes']} passes, "
            f"{cost['mi_evaluations']} MI evals")


# ----------------------------------------------------------------------------------- output


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_columns(report: dict[str, Any]) -> list[str]:
    """Column headers of the comparison table, in order."""
    ppl_names = list(report["settings"]["ppl"])
    task_names = sorted({t for row in report["rows"] for t in row.get("tasks", {})})
    columns = ["method", "N", "removed blocks"] + [f"ppl {p}" for p in ppl_names] + task_names
    if task_names:
        columns.append("task avg")
    return columns + ["seconds", "forward passes", "MI evals", "peak MB"]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """The comparison table as strings, one list per row (dense first)."""
    ppl_names = list(report["settings"]["ppl"])
    task_names = sorted({t for row in report["rows"] for t in row.get("tasks", {})})
    out = []
    for row in report["rows"]:
        cost = row["cost"]
        cells = [row["method"], str(row["prune"]), ",".join(str(b) for b in row["blocks"]) or "—"]
        cells += [_fmt(row["perplexity"].get(p)) for p in ppl_names]
        cells += [_fmt(row["tasks"].get(t), 3) for t in task_names]
        if task_names:
            cells.append(_fmt(row.get("task_average"), 3))
        cells += [_fmt(cost["seconds"], 1), str(cost["forward_passes"]), str(cost["mi_evaluations"]), _fmt(cost["peak_memory_mb"], 0)]
        out.append(cells)
    return out


def to_markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table with a line stating model, data and settings."""
    settings = report["settings"]
    calib = settings["calib"]
    head = (f"Model `{report['model'].get('spec', '?')}` ({report['num_blocks']} blocks); calibration "
            f"{calib.get('name', calib) if isinstance(calib, dict) else calib}, {settings['num_samples']}×{settings['seq_len']} "
            f"tokens, seed {settings['seed']}; perplexity windows {settings['eval_seq_len'] or 'default'}"
            f"{', first ' + str(settings['eval_max_windows']) if settings['eval_max_windows'] else ''}.\n\n")
    columns = table_columns(report)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    return head + "\n".join(lines) + "\n"


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    """The report with non-finite floats replaced by None (strict JSON)."""
    return _json_safe(report)
