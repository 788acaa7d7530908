"""``miprun scores``: print the block and span score table of a run (the MI-PRUN paper's Table 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from miprun.cli.console import out, print_json
from miprun.output import load_report


def scores(
    run: Annotated[Path, typer.Argument(help="Checkpoint directory written by 'miprun run', or its miprun_report.json")],
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Print every block and span score a run computed (rows: first block; columns: span length).

    Removed blocks are marked with *."""
    report = load_report(run)
    rows = report["span_table"]
    if json_output:
        print_json({"metric": report["block_scores"]["metric"], "selected_blocks": report["selected_blocks"], "spans": rows})
        return
    lengths = sorted({r["length"] for r in rows})
    values = {(r["first"], r["length"]): r["value"] for r in rows}
    selected = set(report["selected_blocks"])
    metric = report["block_scores"]["metric"]
    table = Table("block", *[f"{metric} L={n}" for n in lengths], title=f"span scores ({metric}); * = removed")
    for first in sorted({r["first"] for r in rows}):
        cells = [f"{values[(first, n)]:.4f}" if (first, n) in values else "" for n in lengths]
        table.add_row(f"{first}{' *' if first in selected else ''}", *cells)
    out.print(table)
