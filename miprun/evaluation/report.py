"""Render an :func:`miprun.evaluation.evaluate` report as rich tables or Markdown.

Both renderers read the same :func:`sections` (title, headers, rows of strings), so the terminal
and the Markdown file always show the same figures.
"""

from __future__ import annotations

from typing import Any

Section = tuple[str, list[str], list[list[str]]]


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _mb(value: Any) -> str:
    return "–" if not value else f"{value / 2**20:,.1f} MiB"


def _short_source(source: str) -> str:
    """A file's last two path parts (``wikitext-2-raw/wiki.test.raw``), or the upstream name."""
    if source.startswith(("hf:", "text")) or "/" not in source:
        return source
    return "/".join(source.rstrip("/").split("/")[-2:])


def _ppl_sections(report: dict[str, Any]) -> list[Section]:
    out: list[Section] = []
    ppl = report.get("perplexity") or {}
    if ppl:
        rows = [
            [
                name,
                _f(r["perplexity"], 3),
                _f(r["mean_nll"]),
                _f(r["tokens"]),
                f"{r['windows']}/{r['total_windows']}",
                _f(r["seq_len"]),
                _f(r["add_bos"]),
                _short_source(r["source"]),
            ]
            for name, r in ppl.items()
        ]
        out.append(("Perplexity (miprun protocol)", ["data", "ppl", "mean NLL", "tokens", "windows", "seq len", "BOS", "source"], rows))
    lm = (report.get("perplexity_lm_eval") or {}).get("wikitext")
    if lm:
        rows = []
        ours = ppl.get("wikitext2")
        if ours:
            rows.append(["miprun wikitext2: token perplexity", _f(ours["perplexity"], 3), "wiki.test.raw, non-overlapping windows"])
            rows.append(["miprun wikitext2: word perplexity", _f(ours.get("word_perplexity"), 3), "same NLL / whitespace words"])
        rows.append(["lm-eval wikitext: word_perplexity", _f(lm.get("word_perplexity"), 3), f"{lm.get('n')}/{lm.get('n_total')} detokenized pages, rolling {lm.get('max_length')}"])
        rows.append(["lm-eval wikitext: byte_perplexity", _f(lm.get("byte_perplexity")), ""])
        rows.append(["lm-eval wikitext: bits_per_byte", _f(lm.get("bits_per_byte")), ""])
        out.append(("WikiText-2 perplexity two ways", ["measure", "value", "how"], rows))
    return out


def _task_section(report: dict[str, Any]) -> list[Section]:
    tasks = report.get("tasks") or {}
    if not tasks:
        return []
    rows = []
    for name, s in tasks.items():
        rows.append(
            [
                name,
                _f(s.get("acc")),
                _f(s.get("acc_stderr")),
                _f(s.get("acc_norm")),
                _f(s.get("f1")),
                f"{s.get('n')}/{s.get('n_total')}",
                "local" if str(s.get("source", "")).startswith("local:") else s.get("source", ""),
            ]
        )
    rows.append(["average (acc)", _f(report.get("task_average")), "", "", "", "", ""])
    limit = report.get("settings", {}).get("limit")
    title = "lm-eval tasks, zero-shot" + (f" (limit {limit})" if limit else "")
    return [(title, ["task", "acc", "± stderr", "acc_norm", "f1", "docs", "source"], rows)]


def _size_section(report: dict[str, Any]) -> list[Section]:
    size = report.get("size")
    if not size:
        return []
    p = size["parameters"]
    rows = [
        ["total", _f(p["total"])],
        ["embeddings", _f(p["embeddings"])],
        [f"blocks ({p['num_blocks']} × {p['per_block']:,})", _f(p["blocks"])],
        ["head" + (" (tied to embeddings)" if p["tied_head"] else ""), _f(p["head"])],
        ["other (norms)", _f(p["other"])],
        ["touched per forward token", _f(p["per_forward_token"])],
        [f"in memory ({size['dtype']})", _mb(size["memory_bytes"])],
        ["checkpoint on disk", _mb(size.get("checkpoint_bytes"))],
    ]
    return [("Size", ["component", "parameters / bytes"], rows)]


def _speed_section(report: dict[str, Any]) -> list[Section]:
    speed = report.get("speed")
    if not speed:
        return []
    c, pre, dec = speed["config"], speed["prefill"], speed["decode"]
    runs = f"median of {c['repeats']} after {c['warmup']} warm-up, {speed['device']}, {speed['threads']} threads"
    rows = [
        [f"prefill latency (1 × {pre['tokens']} tokens)", f"{pre['seconds'] * 1000:,.1f} ms", f"{pre['tokens_per_second']:,.0f} tokens/s"],
        [f"decode ({dec['batch']} seqs × {dec['new_tokens']} tokens)", f"{dec['seconds'] * 1000:,.1f} ms", f"{dec['tokens_per_second']:,.1f} tokens/s"],
    ]
    return [(f"Speed ({runs})", ["measure", "time", "throughput"], rows)]


def _comparison_sections(report: dict[str, Any]) -> list[Section]:
    comp = report.get("comparison")
    if not comp:
        return []
    out: list[Section] = []
    rows = []
    if "blocks" in comp:
        b = comp["blocks"]
        rows.append(["blocks", _f(b["dense"]), _f(b["pruned"]), f"−{b['removed']}", ""])
        pr = comp["parameters"]
        rows.append(["parameters", _f(pr["dense"]), _f(pr["pruned"]), f"× {pr['ratio']:.3f}", ""])
        if "checkpoint_bytes" in comp:
            cb = comp["checkpoint_bytes"]
            rows.append(["checkpoint", _mb(cb["dense"]), _mb(cb["pruned"]), f"× {cb['ratio']:.3f}", ""])
    ideal = comp.get("ideal_speedup")
    ideal_s = f"{ideal:.3f}× (T/(T−N))" if ideal else "–"
    if "prefill_speedup" in comp:
        rows.append(["prefill speed-up", "", "", f"{comp['prefill_speedup']:.3f}×", ideal_s])
        rows.append(["decode speed-up", "", "", f"{comp['decode_speedup']:.3f}×", ideal_s])
    if rows:
        out.append(("Dense vs pruned", ["measure", "dense", "pruned", "measured", "ideal"], rows))
    if comp.get("generation"):
        rows = [[g["prompt"], g["dense"], g["pruned"]] for g in comp["generation"]]
        out.append(("Greedy generations, dense vs pruned", ["prompt", "dense", "pruned"], rows))
    return out


def _generation_section(report: dict[str, Any]) -> list[Section]:
    if not report.get("generation") or (report.get("comparison") or {}).get("generation"):
        return []
    return [("Greedy generations", ["prompt", "output"], [[g["prompt"], g["output"]] for g in report["generation"]])]


def sections(report: dict[str, Any]) -> list[Section]:
    """The report as titled tables of strings, in display order."""
    return (
        _ppl_sections(report)
        + _task_section(report)
        + _size_section(report)
        + _speed_section(report)
        + _comparison_sections(report)
        + _generation_section(report)
    )


def print_report(report: dict[str, Any], console: Any = None) -> None:
    """Print the report as rich tables (on ``console``, stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    source = report.get("model", {}).get("source", {}).get("spec", "model")
    console.print(f"[bold]miprun eval[/bold] {source} ({report['model'].get('num_blocks', '?')} blocks, {report['model'].get('dtype')})")
    for title, headers, rows in sections(report):
        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 or header in ("source", "how", "prompt", "output", "dense", "pruned") else "right", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (one table per section), for papers and READMEs."""
    model = report.get("model", {})
    spec = model.get("source", {}).get("spec", "model")
    lines = [f"## miprun eval: {spec}", "", f"{model.get('model_type')} · {model.get('num_blocks')} blocks · {model.get('dtype')} · {model.get('device')}", ""]
    for title, headers, rows in sections(report):
        lines += [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)
