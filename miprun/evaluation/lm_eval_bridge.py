"""Evaluate an in-memory model with lm-eval, offline.

The model object is wrapped in ``lm_eval.models.huggingface.HFLM`` (nothing is reloaded from
disk) and scored with ``lm_eval.simple_evaluate``. Tasks whose local files are in the data
directory use miprun's configurations in ``miprun/evaluation/tasks/`` (same names, prompts and
metrics as lm-eval's own tasks, reading ``../shared/data``); the others fall back to lm-eval's
standard task of that name, which downloads its data set.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from miprun.errors import MiprunError, did_you_mean
from miprun.evaluation.local_tasks import LOCAL_TASKS, local_available, local_files

TASKS_DIR = Path(__file__).parent / "tasks"
"""Directory of miprun's offline lm-eval task configurations."""

PAPER_TASKS = ("winogrande", "piqa", "wsc", "wnli", "sst2", "rte", "qnli", "cb", "arc_easy", "arc_challenge")
"""The ten zero-shot tasks of the MI-PRUN paper, in its table order."""

METRICS = ("acc", "acc_norm", "f1", "word_perplexity", "byte_perplexity", "bits_per_byte")


def parse_tasks(spec: str | Sequence[str] | None) -> list[str]:
    """Task names from ``"paper"``, a comma list, or a sequence (``paper`` expands in place)."""
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        for name in PAPER_TASKS if item == "paper" else (item,):
            if name not in names:
                names.append(name)
    return names


@contextlib.contextmanager
def quiet_lm_eval(level: int = logging.ERROR):
    """Lower lm-eval's (and ``datasets``') log output while the block runs."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval", "datasets")]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


@lru_cache(maxsize=1)
def local_task_manager():
    """TaskManager that knows only miprun's offline configurations (fast to build)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@lru_cache(maxsize=1)
def standard_task_manager():
    """TaskManager with lm-eval's built-in tasks (used when a task's local files are absent)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def task_sources(names: Iterable[str]) -> dict[str, str]:
    """Where each task's documents come from: ``local:<dir>`` or ``lm-eval`` (network)."""
    out = {}
    for name in names:
        files = local_files(name) if name in LOCAL_TASKS else None
        out[name] = f"local:{next(iter(files.values())).parent}" if files else "lm-eval"
    return out


def check_task_names(names: Sequence[str]) -> None:
    """Raise a one-line :class:`MiprunError` (with did-you-mean) for a name that is neither a task
    with local files nor one of lm-eval's tasks — before any model is loaded or evaluated."""
    remote = [n for n in names if not local_available(n)]
    if not remote:
        return
    with quiet_lm_eval():
        manager = standard_task_manager()
    for name in remote:
        if name not in manager.all_tasks:
            choices = list(LOCAL_TASKS) + manager.all_subtasks
            raise MiprunError(f"unknown lm-eval task '{name}'{did_you_mean(name, choices)}; use a task name or 'paper'")


def build_tasks(names: Sequence[str], *, offline_only: bool = False) -> dict[str, Any]:
    """lm-eval Task objects by name: miprun's offline configuration when the task's local files
    exist, lm-eval's standard task otherwise (``offline_only`` makes that an error)."""
    local = [n for n in names if local_available(n)]
    remote = [n for n in names if n not in local]
    if remote and offline_only:
        raise MiprunError(f"no local data for task(s) {', '.join(remote)}; put the files in the data directory or allow downloads")
    tasks: dict[str, Any] = {}
    with quiet_lm_eval():
        if local:
            tasks.update(local_task_manager().load(local)["tasks"])
        if remote:
            check_task_names(remote)
            tasks.update(standard_task_manager().load(remote)["tasks"])
    return {name: tasks[name] for name in names}


def make_lm(model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None):
    """Wrap an in-memory causal LM and its tokenizer in lm-eval's ``HFLM`` (no reload)."""
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _extract(results: dict[str, Any], names: Sequence[str], sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        row = results["results"].get(name, {})
        entry: dict[str, Any] = {}
        for metric in METRICS:
            key = f"{metric},none"
            if key in row:
                entry[metric] = _clean(row[key])
                stderr = row.get(f"{metric}_stderr,none")
                if isinstance(stderr, (int, float)):
                    entry[f"{metric}_stderr"] = _clean(stderr)
        samples = results.get("n-samples", {}).get(name, {})
        entry["n"] = samples.get("effective")
        entry["n_total"] = samples.get("original")
        entry["source"] = sources.get(name, "lm-eval")
        out[name] = entry
    return out


def run_tasks(
    model: Any,
    tokenizer: Any,
    names: Sequence[str] | str,
    *,
    limit: int | float | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    lm: Any = None,
    offline_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """Zero-shot lm-eval scores of ``model`` on ``names``.

    Returns ``{task: {"acc": …, "acc_stderr": …, "acc_norm": …, "n": docs scored, "n_total": …,
    "source": "local:…" | "lm-eval"}}``, with ``acc_norm`` (and CB's ``f1``) where lm-eval's task
    reports it. ``limit`` scores only the first N documents of each task.
    """
    from lm_eval import simple_evaluate

    names = parse_tasks(names)
    if not names:
        return {}
    tasks = build_tasks(names, offline_only=offline_only)
    lm = lm or make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    with quiet_lm_eval():
        results = simple_evaluate(
            model=lm,
            tasks=list(tasks.values()),
            limit=limit,
            task_manager=local_task_manager(),
            bootstrap_iters=1000,
            log_samples=False,
        )
    return _extract(results, names, task_sources(names))


def lm_eval_wikitext(
    model: Any,
    tokenizer: Any,
    *,
    max_length: int | None = 2048,
    limit: int | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """lm-eval's ``wikitext`` task (rolling log-likelihood of the 62 detokenized test pages,
    document-level WikiText-2 raw) on the local ``wikitext_document_level_test.jsonl``.

    Returns ``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``, the window length and time.
    """
    start = time.perf_counter()
    lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    scores = run_tasks(model, tokenizer, ["wikitext"], limit=limit, lm=lm)["wikitext"]
    scores.update(max_length=lm.max_length, seconds=round(time.perf_counter() - start, 3))
    return scores
