"""``miprun select``: run a block selector on a precomputed span-MI table.

Register it on an app with ``app.command("select")(select)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from miprun.contracts import Selection
from miprun.errors import MiprunError


def _fmt(x: Any) -> str:
    """A number for a table cell."""
    return "—" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _blocks(blocks: list[int]) -> str:
    """``{23, 24, 26}`` for a table cell."""
    return "{" + ", ".join(map(str, blocks)) + "}"


def _print_result(console: Console, name: str, selection: Selection, scores: Any) -> None:
    """The chosen blocks with their single-block MI."""
    table = Table(title=f"{name}: remove {len(selection.blocks)} of {scores.num_blocks} blocks")
    table.add_column("block", justify="right")
    table.add_column(scores.metric, justify="right")
    table.add_column("importance", justify="right")
    for b in selection.blocks:
        table.add_row(str(b), _fmt(scores.value(b)), _fmt(scores.importance(b)))
    console.print(table)
    extra = ""
    if "iterations" in selection.info:
        extra = f", {selection.info['iterations']} iteration(s), stopped: {selection.info['stop']}"
    console.print(
        f"blocks: {selection.blocks}; spans evaluated: {selection.evaluations}{extra}", soft_wrap=True
    )


def _print_trace(console: Console, selection: Selection) -> None:
    """One table row per group per refinement iteration (or the greedy ranking)."""
    if selection.trace and "ranking" in selection.trace[0]:
        table = Table(title="single-block ranking (most prunable first)")
        table.add_column("rank", justify="right")
        table.add_column("block", justify="right")
        table.add_column("importance", justify="right")
        for rank, row in enumerate(selection.trace[0]["ranking"], start=1):
            table.add_row(str(rank), str(row["block"]), _fmt(row["importance"]))
        console.print(table)
        return
    for it in selection.trace:
        console.print(
            f"iteration {it['iteration']}: P = {_blocks(it['P'])}  A = {_blocks(it['A'])}", soft_wrap=True
        )
        table = Table()
        for col in ("group", "K / |C|", "evaluated exactly (value)", "choice", "fallback"):
            table.add_column(col)
        for g in it["groups"]:
            evaluated = "\n".join(
                f"{c['blocks'][0]}–{c['blocks'][-1]}  {_fmt(c['value'])}"
                for c in g["candidates"] if c["evaluated"]
            )
            table.add_row(
                _blocks(g["group"]), f"{g['K']} / {g['num_candidates']}", evaluated,
                _blocks(g["choice"]["blocks"]), g["fallback"] or "", end_section=True,
            )
        console.print(table)
        status = it["stop"] or ("changed" if it["changed"] else "unchanged")
        console.print(f"  → new P = {_blocks(it['new_P'])} ({status})", soft_wrap=True)


def select(
    scores: Annotated[Path, typer.Option("--scores", help="Span table: columns first_layer length mi ('#' comments, header row).")],
    blocks: Annotated[int, typer.Option("--blocks", help="Number of blocks T in the model.")],
    prune: Annotated[int, typer.Option("--prune", help="Number of blocks N to remove (1 ≤ N < T).")],
    selector: Annotated[str, typer.Option("--selector", help="Selector name, e.g. greedy, fast-block-select, brute-force.")],
    k: Annotated[Optional[int], typer.Option("--k", help="Fast-Block-Select budget k in K = min(⌊ln L⌋ + k, |C|) (default 5).")] = None,
    conflict: Annotated[Optional[str], typer.Option("--conflict", help="Conflict rule: greedy-longest-first (default) or max-sum.")] = None,
    missing_mi: Annotated[Optional[float], typer.Option("--missing-mi", help="MI for spans absent from the table (default: error).")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Also show every refinement iteration.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Choose blocks to remove from a precomputed span-MI table (importance = −MI)."""
    from miprun.registry import get_registry
    from miprun.selectors.span_table import load_span_scores

    options: dict[str, Any] = {}
    if k is not None:
        options["k"] = k
    if conflict is not None:
        options["conflict"] = conflict
    entry = get_registry().get("selector", selector)  # a misspelt name is told before the table is read
    span_scores = load_span_scores(scores, blocks, missing=missing_mi)
    if not entry.works_at("block") or not entry.capabilities.needs_scores or entry.capabilities.runs_model:
        raise MiprunError(f"selector '{selector}' does not choose from a score table alone; use a block "
                          f"selector that reads scores: greedy, fast-block-select, brute-force, best-span")
    strategy = entry.create(**options)
    selection = strategy.select(span_scores, prune)

    if as_json:
        payload = {
            "blocks": selection.blocks,
            "evaluations": selection.evaluations,
            "selector": selector,
            "options": {**entry.defaults(), **options},
            "trace": selection.trace if trace else [],
        }
        typer.echo(json.dumps(payload))
        return
    console = Console()
    _print_result(console, selector, selection, span_scores)
    if trace:
        _print_trace(console, selection)
