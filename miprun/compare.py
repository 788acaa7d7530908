"""Head-to-head comparison of pruning methods on one model, one calibration sample, one protocol.

:func:`compare` loads the model once, draws one calibration sample and collects the block-boundary
hidden states once, then for every method (and every depth in curve mode) prunes a fresh deep copy
of the model and evaluates it with :func:`miprun.evaluation.evaluate`. The dense model is the first
row. ``miprun compare`` is a thin shell over it::

    from miprun.compare import compare
    report = compare("smollm2-135m", prune=6, methods=["mi-prun", "shortgpt", "sleb"])
    report["rows"][1]["blocks"], report["rows"][1]["perplexity"]["wikitext2"]

Cost accounting (``row["cost"]``):

* ``seconds`` — wall time of the method's pruning (scoring, selection, surgery), plus the shared
  hidden-state collection for methods that read those states; evaluation is not included.
* ``forward_passes`` — passes over the whole calibration set (1 for the collection, plus whatever
  the strategies run through :mod:`miprun.probing`).
* ``mi_evaluations`` — distinct span MI estimates (MI-based scorers only); ``span_evaluations`` —
  distinct span scores of any kind.
* ``peak_memory_mb`` — the peak increase of resident memory (CPU) or of allocated GPU memory over
  its level when the method started (its deep copy already made); approximate on the CPU, where
  the allocator may reuse memory freed by earlier methods.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from miprun.errors import MiprunError, did_you_mean
from miprun.models.devices import input_device

DENSE = "dense"


@dataclass(frozen=True)
class MethodSpec:
    """One named method: the strategies it composes and their default options.

    :param scorer: scorer name, or None for methods whose selector needs no scores.
    :param uses_states: whether the method reads the collected hidden states (and so is charged
        the collection's cost).
    """

    name: str
    selector: str
    scorer: str | None = None
    estimator: str | None = None
    surgeon: str = "remove-blocks"
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    uses_states: bool = True
    description: str = ""

    def plan(self) -> dict[str, str]:
        """Strategy kind → name, for the kinds this method uses."""
        names = {"scorer": self.scorer, "estimator": self.estimator, "selector": self.selector, "surgeon": self.surgeon}
        return {kind: name for kind, name in names.items() if name is not None}


def _mi(selector: str, description: str, scorer: str = "output-mi") -> MethodSpec:
    from miprun.pipeline import DEFAULT_ESTIMATOR

    return MethodSpec("", selector, scorer, DEFAULT_ESTIMATOR, description=description)


def builtin_methods() -> dict[str, MethodSpec]:
    """The methods ``miprun compare`` knows by name."""
    specs = {
        "mi-prun": _mi("fast-block-select", "MI of the model output with/without the set + Fast-Block-Select (default)"),
        "mi-greedy": _mi("greedy", "Single-block output MI, the N least informative blocks at once"),
        "mi-prun-local": _mi("fast-block-select", "MI-PRUN paper: block input/output MI + span refinement",
                             scorer="block-mi"),
        "mi-brute-force": _mi("brute-force", "MI-PRUN paper's refinement scoring every candidate span exactly",
                              scorer="block-mi"),
        "shortgpt": MethodSpec("", "greedy", "block-influence", description="ShortGPT block influence (1 − cos), greedy"),
        "angular": MethodSpec("", "best-span", "angular", description="Gromov et al.: best contiguous span by angular distance"),
        "angular-last": MethodSpec("", "best-span", "angular", options={"scorer": {"last_token": True}}, uses_states=False,
                                   description="Angular distance on the last token only (the paper's setting)"),
        "sleb": MethodSpec("", "sleb", uses_states=False, description="SLEB: iterative removal by calibration loss"),
        "ppl": MethodSpec("", "greedy", "ppl", uses_states=False,
                          description="Shortened LLaMA PPL: one-shot perplexity without each block"),
        "taylor": MethodSpec("", "greedy", "taylor", uses_states=False,
                             description="Shortened LLaMA Taylor+: Σ|w·∂L/∂w| per block"),
        "magnitude": MethodSpec("", "greedy", "magnitude", uses_states=False, description="Mean |w| per block"),
        "laco": MethodSpec("", "laco", surgeon="laco", uses_states=False,
                           description="LaCo layer collapse: merge following layers into a base"),
        "random": MethodSpec("", "random", uses_states=False, description="Seeded random blocks"),
    }
    return {name: MethodSpec(name, s.selector, s.scorer, s.estimator, s.surgeon, s.options, s.uses_states, s.description)
            for name, s in specs.items()}


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """Split a comma list of method names and check each one (did-you-mean on a typo)."""
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    if not names:
        raise MiprunError("give at least one method, e.g. --methods mi-prun,shortgpt")
    known = builtin_methods()
    for name in names:
        if name not in known:
            raise MiprunError(f"unknown method '{name}'{did_you_mean(name, list(known))}; "
                              f"known methods: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise MiprunError(f"method listed twice in {','.join(names)}")
    return names


def parse_depths(prune: int | str | Sequence[int]) -> list[int]:
    """``6`` → [6]; ``"2,4,6"`` → [2, 4, 6] (sorted, distinct, each ≥ 1)."""
    if isinstance(prune, int):
        values = [prune]
    elif isinstance(prune, str):
        try:
            values = [int(p) for p in prune.split(",") if p.strip()]
        except ValueError as exc:
            raise MiprunError(f"--prune takes a number or a comma list of numbers, got '{prune}'") from exc
    else:
        values = [int(p) for p in prune]
    if not values or any(v < 1 for v in values):
        raise MiprunError(f"--prune needs block counts ≥ 1, got {prune!r}")
    return sorted(set(values))


def parse_method_options(items: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``METHOD.KIND.KEY=VALUE`` items → ``{method: {kind: {key: value}}}``."""
    from miprun.cli.options import parse_options

    grouped: dict[str, list[str]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot:
            raise MiprunError(f"option '{item}' is not METHOD.KIND.KEY=VALUE (e.g. sleb.selector.batch_size=8)")
        grouped.setdefault(method, []).append(rest)
    known = builtin_methods()
    for method in grouped:
        if method not in known:
            raise MiprunError(f"option for unknown method '{method}'{did_you_mean(method, list(known))}")
    return {method: parse_options(rest) for method, rest in grouped.items()}


def require_matplotlib() -> Any:
    """Import matplotlib (Agg backend) or raise a :class:`MiprunError` saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MiprunError(
            "the pruning-curve plot needs matplotlib, an optional extra: pip install 'miprun[plot]' "
            "(or pip install matplotlib); pass --no-plot to get the table only"
        ) from exc
    return plt


# ----------------------------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:  # psutil missing or unsupported platform
            return None


def _release_freed_memory() -> None:
    """Hand memory freed by the previous method back to the OS (glibc), so RSS peaks mean something.

    No ``gc.collect()``: the deep copies hold no reference cycles and are freed by reference
    counting, and a full collection costs about a second in a process that imported lm-eval."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager measuring the peak memory increase while it is open (see module docstring).

    On CUDA the peak comes from ``torch.cuda.max_memory_allocated``; on the CPU a background thread
    samples the resident set size every ``interval`` seconds.
    """

    def __init__(self, device: Any = None, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0
        self._peak = 0

    def _cuda(self) -> bool:
        return self.device is not None and getattr(self.device, "type", str(self.device)) == "cuda"

    def __enter__(self) -> "PeakMemory":
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        start = _rss_bytes()
        if start is None:
            return self
        self._start = self._peak = start

        def sample() -> None:
            while not self._stop.wait(self.interval):
                now = _rss_bytes() or 0
                self._peak = max(self._peak, now)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            self.peak_mb = round((torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20, 1)
            return
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes() or 0)
        self.peak_mb = round((self._peak - self._start) / 2**20, 1)


# ----------------------------------------------------------------------------------- compare


def _no_scores(num_blocks: int) -> Any:
    from miprun.scores import SpanScores

    def compute(first: int, length: int) -> float:
        raise MiprunError("this method's selector reads no span scores")

    return SpanScores(num_blocks, compute, metric="none", redundant_when_high=False)


def _strategies(spec: MethodSpec, extra: Mapping[str, Mapping[str, Any]], seed: int, registry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the method's strategies; returns (strategies by kind, description by kind with the
    effective options: defaults overridden by the method's and the caller's)."""
    plan = spec.plan()
    unknown = set(extra) - set(plan)
    if unknown:
        raise MiprunError(f"method '{spec.name}' uses no {', '.join(sorted(unknown))} (it uses {', '.join(plan)})")
    built, described = {}, {}
    for kind, name in plan.items():
        entry = registry.get(kind, name)
        options = {**dict(spec.options.get(kind, {})), **dict(extra.get(kind, {}))}
        if "seed" in entry.options() and "seed" not in options:
            options["seed"] = seed
        built[kind] = entry.create(**options)
        described[kind] = {"name": name, "options": {**entry.defaults(), **options}}
    return built, described


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
    methods: str | Sequence[str] = ("mi-prun", "shortgpt", "angular", "sleb", "random"),
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
) -> dict[str, Any]:
    """Prune ``model`` with every method in ``methods`` at every depth in ``prune`` and evaluate each.

    :param model: embedded name, checkpoint directory, hub id, or a
        :class:`~miprun.models.loading.LoadedModel` (never modified: each method prunes a deep copy).
    :param prune: blocks to remove — one number, or several (curve mode).
    :param methods: names from :func:`builtin_methods`.
    :param ppl: perplexity data sets; ``tasks``/``limit``: lm-eval tasks (see
        :func:`miprun.evaluation.evaluate`).
    :param eval_seq_len: perplexity window; ``eval_max_windows``: only the first N windows.
    :param options: per-method strategy options ``{method: {kind: {key: value}}}``.
    :param log: called with one line per finished step (progress for the CLI).
    :param on_row: called with the report so far (``"complete": False``) after every row, so that a
        long comparison that is interrupted still leaves its finished rows behind.
    :returns: ``{"model", "num_blocks", "settings", "rows", "complete", "seconds"}``; ``rows[0]`` is the dense model, then one row per
        method and depth with ``method``, ``prune``, ``blocks``, ``perplexity``, ``tasks``,
        ``task_average``, ``cost``, ``strategies``, ``selection``.
    """
    import torch

    from miprun.data.calibration import load_calibration
    from miprun.evaluation import evaluate
    from miprun.models.adapters import adapter_for
    from miprun.models.embedded import DEFAULT_MODEL
    from miprun.models.loading import LoadedModel, load_model
    from miprun.pipeline import blocks_to_remove
    from miprun.registry import get_registry
    from miprun.strategies import RunContext, call_with_context

    log = log or (lambda line: None)
    names = parse_methods(methods)
    depths = parse_depths(prune)
    options = dict(options or {})
    unknown = set(options) - set(names)
    if unknown:
        raise MiprunError(f"options given for {', '.join(sorted(unknown))}, which is not among the compared methods")
    registry = get_registry()
    known = builtin_methods()
    for name in names:  # check every strategy name and option before any work starts
        _strategies(known[name], options.get(name, {}), seed, registry)

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
    collector = registry.create("collector", "hidden-states", seed=seed)
    t0 = time.perf_counter()
    states = collector.collect(loaded.model, loaded.adapter, input_ids)
    collect_seconds = time.perf_counter() - t0
    log(f"collected hidden states ({states.info.get('tokens')} tokens) in {collect_seconds:.1f}s")

    def run_eval(target: Any, adapter: Any) -> dict[str, Any]:
        if not ppl and not tasks:
            return {}
        return evaluate(target, loaded.tokenizer, ppl=tuple(ppl), tasks=tasks, limit=limit, seq_len=eval_seq_len,
                        max_windows=eval_max_windows, batch_size=eval_batch_size, adapter=adapter, progress=False)

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
                "tasks": list(tasks) if not isinstance(tasks, str) else tasks,
                "limit": limit, "eval_seq_len": eval_seq_len, "eval_max_windows": eval_max_windows,
                "collection": {"seconds": round(collect_seconds, 3),
                               **{k: v for k, v in states.info.items() if isinstance(v, (int, float, str, bool))}},
                "device": str(device),
                "methods_described": {name: {"plan": known[name].plan(), "description": known[name].description}
                                      for name in names},
            },
            "rows": list(rows),
            "complete": complete,
            "seconds": round(time.perf_counter() - started, 3),
        }

    if on_row is not None:
        on_row(report(False))

    for name in names:
        spec = known[name]
        for n in depths:
            strategies, described = _strategies(spec, options.get(name, {}), seed, registry)
            _release_freed_memory()
            working = copy.deepcopy(loaded.model)
            adapter = adapter_for(working)
            context = RunContext(working, adapter, input_ids, loaded.tokenizer, seed,
                                 forward_passes=states.forward_passes if spec.uses_states else 0)
            torch.manual_seed(seed)
            with PeakMemory(device) as memory:
                t0 = time.perf_counter()
                if spec.scorer is None:
                    scores = _no_scores(total)
                else:
                    scores = call_with_context(strategies["scorer"].score, states, strategies.get("estimator"), context=context)
                selection = call_with_context(strategies["selector"].select, scores, n, context=context)
                surgery = strategies["surgeon"].apply(working, adapter, list(selection.blocks))
                seconds = time.perf_counter() - t0 + (collect_seconds if spec.uses_states else 0.0)
            evaluation = run_eval(working, adapter)
            info = {k: v for k, v in selection.info.items() if isinstance(v, (int, float, str, bool, list, dict)) or v is None}
            row = {
                "method": name,
                "prune": n,
                "blocks": sorted(int(b) for b in selection.blocks),
                **_evaluation_fields(evaluation),
                "cost": {
                    "seconds": round(seconds, 3),
                    "forward_passes": context.forward_passes,
                    "mi_evaluations": scores.evaluations if scores.metric == "mi" else 0,
                    "span_evaluations": scores.evaluations,
                    "peak_memory_mb": memory.peak_mb,
                },
                "strategies": described,
                "selection": _json_safe(info),
                "parameters": surgery.get("parameters_after"),
            }
            if "merges" in surgery:
                row["merges"] = surgery["merges"]
            rows.append(row)
            log(f"{name} -{n}: {_brief(row)}")
            if on_row is not None:
                on_row(report(False))
            del working, adapter, context, scores, selection
    _release_freed_memory()
    return report(True)


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


def write_curve(report: dict[str, Any], plot: str | Path, dataset: str | None = None) -> tuple[Path, Path]:
    """Plot perplexity against blocks removed, one line per method, with the dense model as a
    dashed line; write the PNG to ``plot`` and the table behind it to ``plot`` with ``.csv``.

    :returns: (PNG path, CSV path).
    """
    dataset = dataset or (report["settings"]["ppl"] or [None])[0]
    if dataset is None:
        raise MiprunError("the pruning curve plots perplexity; evaluate at least one data set (--eval wikitext2)")
    png = Path(plot)
    data = png.with_suffix(".csv")
    rows = [r for r in report["rows"] if r["method"] != DENSE]
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "prune", "blocks", f"ppl_{dataset}", "seconds", "forward_passes", "mi_evaluations"])
        for r in report["rows"]:
            writer.writerow([r["method"], r["prune"], " ".join(map(str, r["blocks"])), r["perplexity"].get(dataset),
                             r["cost"]["seconds"], r["cost"]["forward_passes"], r["cost"]["mi_evaluations"]])
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["prune"], r["perplexity"].get(dataset)) for r in rows if r["method"] == method)
        points = [(x, y) for x, y in points if isinstance(y, (int, float))]
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=method)
    dense = report["rows"][0]["perplexity"].get(dataset)
    if isinstance(dense, (int, float)):
        ax.axhline(dense, color="grey", linestyle="--", linewidth=1, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("blocks removed")
    ax.set_ylabel(f"perplexity ({dataset}, log scale)")
    ax.set_title(f"{report['model'].get('spec', '')}: pruning curve")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png, data
