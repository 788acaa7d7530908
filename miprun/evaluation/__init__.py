"""Evaluation suite: perplexity, lm-eval tasks (offline), size and speed, generation samples.

:func:`evaluate` runs any combination on an in-memory model and returns a JSON-serialisable
report; ``miprun eval`` and ``miprun run --eval`` are thin shells over it. The protocols are
documented in ``docs/evaluation.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from miprun.evaluation.generation import DEFAULT_PROMPTS
from miprun.evaluation.lm_eval_bridge import PAPER_TASKS, parse_tasks
from miprun.evaluation.size_speed import SpeedConfig
from miprun.models.devices import input_device

__all__ = ["PAPER_TASKS", "SpeedConfig", "compare_reports", "evaluate", "parse_limit", "parse_tasks", "two_ways"]


def parse_limit(limit: float | None) -> int | float | None:
    """``--limit`` as lm-eval takes it: a whole number of documents (``200`` → 200) or a fraction of
    each task (``0.1``); zero or negative is an error."""
    from miprun.errors import MiprunError

    if limit is None:
        return None
    if limit <= 0:
        raise MiprunError(f"--limit must be positive, got {limit}; give a number of documents or a fraction below 1")
    return int(limit) if limit >= 1 and float(limit).is_integer() else limit


def _model_info(model: Any, adapter: Any, source: dict[str, Any] | None) -> dict[str, Any]:
    first = next(model.parameters())
    info: dict[str, Any] = {
        "model_type": getattr(model.config, "model_type", None),
        "class": type(model).__name__,
        "dtype": str(first.dtype).replace("torch.", ""),
        "device": str(input_device(model)),
    }
    if adapter is not None:
        info["num_blocks"] = adapter.num_blocks
    if source:
        info["source"] = {k: v for k, v in source.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return info


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    ppl: Sequence[str] = ("wikitext2",),
    tasks: Sequence[str] | str = (),
    limit: int | float | None = None,
    latency: bool = False,
    generate: bool = False,
    progress: bool | None = None,
    seq_len: int | None = None,
    batch_size: int = 1,
    task_batch_size: int = 8,
    max_windows: int | None = None,
    ppl_lm_eval: bool = False,
    lm_eval_pages: int | None = None,
    speed_config: SpeedConfig | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_new_tokens: int = 48,
    source: dict[str, Any] | None = None,
    adapter: Any = None,
    on_section: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` and return a JSON-serialisable report.

    :param ppl: perplexity data sets (``wikitext2``, ``wikitext2-tokenized``, ``c4``, ``ptb`` or
        local ``.txt``/``.jsonl`` paths), miprun's protocol (:mod:`miprun.evaluation.perplexity`).
    :param tasks: lm-eval task names, a comma list, or ``"paper"`` for the paper's ten tasks.
    :param limit: score only the first ``limit`` documents of each task.
    :param latency: measure prefill latency and decode throughput (``speed_config``).
    :param generate: greedy continuations of ``prompts``.
    :param progress: perplexity progress bar on stderr (None: when stderr is a terminal).
    :param seq_len: perplexity window length (default ``min(2048, context)``); also the context
        lm-eval is given for its ``wikitext`` task when ``ppl_lm_eval``.
    :param batch_size: perplexity windows per forward pass; ``task_batch_size`` for lm-eval.
    :param max_windows: perplexity on the first N windows only (quick runs).
    :param ppl_lm_eval: also run lm-eval's ``wikitext`` word-perplexity task on the local
        document-level WikiText-2 test set, reported beside miprun's ``wikitext2``
        (``lm_eval_pages``: only the first N of its 62 pages).
    :param source: where the model came from (``LoadedModel.source``); its ``path`` gives the
        checkpoint size on disk.
    :param on_section: called with the report so far after each finished section (e.g. to save
        partial results of a long run).
    :param adapter: the model's :class:`~miprun.models.adapters.ArchitectureAdapter` (found from
        the model when omitted).
    :returns: ``{"model", "settings", "size", "perplexity", "perplexity_lm_eval", "tasks",
        "task_average", "speed", "generation", "seconds"}`` (sections present when requested).
    """
    from miprun.evaluation import lm_eval_bridge, perplexity, size_speed
    from miprun.evaluation.generation import generate_samples
    from miprun.models.adapters import adapter_for

    start = time.perf_counter()
    adapter = adapter or adapter_for(model)
    task_names = parse_tasks(tasks)
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {
        "model": _model_info(model, adapter, source),
        "settings": {
            "ppl": list(ppl),
            "tasks": task_names,
            "limit": limit,
            "seq_len": seq_len or perplexity.default_seq_len(model),
            "batch_size": batch_size,
            "max_windows": max_windows,
        },
    }
    checkpoint = (source or {}).get("path") if (source or {}).get("kind") in ("directory", "embedded", "gguf") else None
    report["size"] = size_speed.model_size(model, adapter, checkpoint)

    if ppl:
        t0 = time.perf_counter()
        report["perplexity"] = {
            name: perplexity.perplexity(
                model, tokenizer, name, seq_len=seq_len, batch_size=batch_size, max_windows=max_windows, progress=progress
            ).to_dict()
            for name in ppl
        }
        seconds["perplexity"] = round(time.perf_counter() - t0, 3)
        _notify(on_section, report, seconds)
    if ppl_lm_eval:
        t0 = time.perf_counter()
        report["perplexity_lm_eval"] = {
            "wikitext": lm_eval_bridge.lm_eval_wikitext(
                model, tokenizer, max_length=report["settings"]["seq_len"], limit=lm_eval_pages, batch_size=batch_size
            )
        }
        seconds["perplexity_lm_eval"] = round(time.perf_counter() - t0, 3)
        ours = report.get("perplexity", {}).get("wikitext2")
        if ours:
            report["wikitext2_two_ways"] = two_ways(ours, report["perplexity_lm_eval"]["wikitext"])
        _notify(on_section, report, seconds)
    if task_names:
        t0 = time.perf_counter()
        scores = lm_eval_bridge.run_tasks(model, tokenizer, task_names, limit=limit, batch_size=task_batch_size)
        report["tasks"] = scores
        accs = [s["acc"] for s in scores.values() if isinstance(s.get("acc"), (int, float))]
        report["task_average"] = sum(accs) / len(accs) if accs else None
        seconds["tasks"] = round(time.perf_counter() - t0, 3)
        _notify(on_section, report, seconds)
    if latency:
        t0 = time.perf_counter()
        report["speed"] = size_speed.speed(model, speed_config)
        seconds["speed"] = round(time.perf_counter() - t0, 3)
        _notify(on_section, report, seconds)
    if generate:
        t0 = time.perf_counter()
        report["generation"] = generate_samples(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        seconds["generation"] = round(time.perf_counter() - t0, 3)
    seconds["total"] = round(time.perf_counter() - start, 3)
    report["seconds"] = seconds
    return report


def _notify(callback: Callable[[dict[str, Any]], None] | None, report: dict[str, Any], seconds: dict[str, float]) -> None:
    if callback is not None:
        callback({**report, "seconds": dict(seconds)})


def two_ways(ours: dict[str, Any], lm_eval: dict[str, Any]) -> dict[str, Any]:
    """WikiText-2 perplexity by miprun's protocol and by lm-eval's ``wikitext`` task, side by side.

    ``miprun_token_ppl`` is miprun's headline number (per token of the model's tokenizer);
    ``miprun_word_ppl`` re-expresses the same total NLL per whitespace-separated word, the unit of
    lm-eval's ``word_perplexity`` (which scores detokenized document-level pages).
    """
    return {
        "miprun_token_ppl": ours["perplexity"],
        "miprun_word_ppl": ours.get("word_perplexity"),
        "lm_eval_word_ppl": lm_eval.get("word_perplexity"),
        "lm_eval_byte_ppl": lm_eval.get("byte_perplexity"),
        "lm_eval_bits_per_byte": lm_eval.get("bits_per_byte"),
    }


def compare_reports(dense: dict[str, Any], pruned: dict[str, Any]) -> dict[str, Any]:
    """Dense vs pruned: block counts, ideal speed-up T/(T−N), measured prefill and decode
    speed-ups, parameter and checkpoint ratios, and generations side by side."""
    from miprun.evaluation.generation import side_by_side
    from miprun.evaluation.size_speed import compare

    out = compare(dense, pruned)
    if dense.get("generation") and pruned.get("generation"):
        out["generation"] = side_by_side(dense["generation"], pruned["generation"])
    return out
