"""``miprun eval``: perplexity, lm-eval tasks, size/speed and generations for one checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from miprun.errors import MiprunError
from miprun.models.embedded import DEFAULT_MODEL, MODEL_HELP


def _split(value: str | None) -> list[str]:
    if not value or value.strip().lower() in ("none", "-"):
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def _load(spec: str, dtype: str, device: str | None, layerwise: bool = False):
    from miprun.models.layerwise import load_layerwise
    from miprun.models.loading import load_model

    if layerwise:
        return load_layerwise(spec, dtype=dtype, device=device or "cpu")
    loaded = load_model(spec, dtype=dtype)
    if device:
        try:
            loaded.model.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise MiprunError(f"cannot move the model to '{device}': {str(exc).splitlines()[0]}") from exc
    return loaded


def _write_json(path: Path, report: dict) -> None:
    from miprun.output import write_text_atomically

    write_text_atomically(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


def eval_command(
    model: str = typer.Argument(DEFAULT_MODEL, help=f"{MODEL_HELP}."),
    ppl: str = typer.Option("wikitext2", "--ppl", help="Perplexity data: comma list of wikitext2, wikitext2-tokenized, c4, ptb or .txt/.jsonl/.json paths; 'none' to skip."),
    tasks: str = typer.Option("", "--tasks", help="lm-eval tasks: comma list, or 'paper' for the paper's ten."),
    limit: Optional[float] = typer.Option(None, "--limit", help="Score only the first N documents of each task (quick runs)."),
    latency: bool = typer.Option(False, "--latency", help="Measure prefill latency and decode throughput."),
    generate: bool = typer.Option(False, "--generate", help="Greedy generations for a few prompts."),
    compare_to: Optional[str] = typer.Option(None, "--compare-to", help="Dense model to compare against: size, speed-up (measured vs ideal T/(T-N)), generations."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
    markdown_file: Optional[Path] = typer.Option(None, "--markdown", help="Write the report as Markdown tables."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Perplexity window length (default min(2048, model context))."),
    batch_size: int = typer.Option(4, "--batch-size", help="Perplexity windows and lm-eval requests per forward pass."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="Perplexity on the first N windows only."),
    ppl_lm_eval: bool = typer.Option(False, "--ppl-lm-eval", help="Also run lm-eval's wikitext word-perplexity task on the local document-level WikiText-2 test set (beside --ppl wikitext2)."),
    lm_eval_pages: Optional[int] = typer.Option(None, "--lm-eval-pages", help="With --ppl-lm-eval: only the first N of the 62 pages."),
    prefill_len: int = typer.Option(512, "--prefill-len", help="Latency: tokens in the 1 × L prefill."),
    decode_batch: int = typer.Option(8, "--decode-batch", help="Throughput: sequences decoded together."),
    decode_tokens: int = typer.Option(32, "--decode-tokens", help="Throughput: new tokens per sequence."),
    repeats: int = typer.Option(5, "--repeats", help="Latency: timed runs (median reported) after one warm-up."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="Generation prompt (repeatable; default: built-in prompts)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Generation length."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="Move the model here (e.g. cuda) before evaluating."),
    layerwise: bool = typer.Option(False, "--layerwise", help="Read blocks from the checkpoint as they run (models larger than memory); perplexity runs block by block."),
) -> None:
    """Evaluate MODEL the way the MI-PRUN paper reports results, offline when the data directory is there."""
    _run(**locals())


def _run(
    model, ppl, tasks, limit, latency, generate, compare_to, json_file, markdown_file, seq_len, batch_size,
    max_windows, ppl_lm_eval, lm_eval_pages, prefill_len, decode_batch, decode_tokens, repeats, prompt,
    max_new_tokens, dtype, device, layerwise,
) -> None:
    from rich.console import Console

    from miprun.evaluation import compare_reports, evaluate, parse_limit, parse_tasks
    from miprun.evaluation.generation import DEFAULT_PROMPTS
    from miprun.evaluation.lm_eval_bridge import check_task_names
    from miprun.evaluation.perplexity import check_dataset
    from miprun.evaluation.report import print_report, to_markdown
    from miprun.evaluation.size_speed import SpeedConfig
    from miprun.models.loading import source_locations
    from miprun.output import check_file_output

    if batch_size < 1:
        raise MiprunError(f"--batch-size must be at least 1, got {batch_size}")
    if seq_len is not None and seq_len < 2:
        raise MiprunError(f"--seq-len must be at least 2 tokens, got {seq_len}; leave it out for min(2048, model context)")
    if max_windows is not None and max_windows < 1:
        raise MiprunError(f"--max-windows must be at least 1, got {max_windows}")
    limit_value = parse_limit(limit)
    task_names = parse_tasks(tasks)
    check_task_names(task_names)  # before the model loads
    ppl_names = _split(ppl)
    for name in ppl_names:
        check_dataset(name)
    speed_config = SpeedConfig(prefill_len=prefill_len, decode_batch=decode_batch, decode_tokens=decode_tokens, repeats=repeats)
    prompts = tuple(prompt) if prompt else DEFAULT_PROMPTS
    stderr = Console(stderr=True)

    def save_partial(partial: dict) -> None:
        if json_file:
            _write_json(json_file, {**partial, "partial": True})

    for flag, path in (("--json", json_file), ("--markdown", markdown_file)):
        if path:
            check_file_output(path, flag, source_locations(model))  # before the model loads and hours of evaluation
    loaded = _load(model, dtype, device, layerwise)
    stderr.print(f"[dim]loaded {model} ({loaded.adapter.num_blocks} blocks) in {loaded.source.get('load_seconds')} s[/dim]")
    report = evaluate(
        loaded.model, loaded.tokenizer, ppl=ppl_names, tasks=task_names, limit=limit_value, latency=latency,
        generate=generate, progress=True, seq_len=seq_len, batch_size=batch_size, task_batch_size=batch_size,
        max_windows=max_windows, ppl_lm_eval=ppl_lm_eval, lm_eval_pages=lm_eval_pages, speed_config=speed_config,
        prompts=prompts, max_new_tokens=max_new_tokens, source=loaded.source, adapter=loaded.adapter,
        on_section=save_partial,
    )
    if compare_to:
        dense = _load(compare_to, dtype, device, layerwise)
        stderr.print(f"[dim]loaded reference {compare_to} ({dense.adapter.num_blocks} blocks)[/dim]")
        reference = evaluate(
            dense.model, dense.tokenizer, ppl=(), tasks=(), latency=latency, generate=generate,
            speed_config=speed_config, prompts=prompts, max_new_tokens=max_new_tokens, source=dense.source, adapter=dense.adapter,
        )
        report["reference"] = reference
        report["comparison"] = compare_reports(reference, report)

    print_report(report, Console())
    if json_file:
        _write_json(json_file, report)
        stderr.print(f"wrote {json_file}")
    if markdown_file:
        from miprun.output import write_text_atomically

        write_text_atomically(markdown_file, to_markdown(report) + "\n")
        stderr.print(f"wrote {markdown_file}")
