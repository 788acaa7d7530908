"""``miprun scores``: print the block and span score table of a run (the MI-PRUN paper's Table 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from miprun.cli.console import err, out, print_json
from miprun.errors import MiprunError
from miprun.output import load_report


def scores(
    run: Annotated[Path, typer.Argument(help="Checkpoint directory written by 'miprun run', or its miprun_report.json")],
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the spans as a heatmap (first block × length, removed blocks marked) with per-block importance bars, to this PNG")] = None,
) -> None:
    """Print every block and span score a run computed (rows: first block; columns: span length).

    Removed blocks are marked with *."""
    report = load_report(run)
    try:
        rows, source = report["span_table"], ""
        if not rows and report.get("screen"):  # a screened scorer: the spans it scored on the screen
            rows = report["screen"]["span_table"]
            source = f", screen of {report['block_scores'].get('screen_samples', '?')} sequences"
        metric, selected = report["block_scores"]["metric"], set(report["selected_blocks"])
        values = {(int(r["first"]), int(r["length"])): float(r["value"]) for r in rows}
        total = int(report["prune"]["of_blocks"])
        singles = [float(v) for v in report["block_scores"].get("importance") or []]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise MiprunError(f"'{run}' is not the report of a block run (no span table); 'miprun scores' reads "
                          f"what 'miprun run' wrote at block granularity") from None
    if plot is not None:
        from miprun.plotting import check_plot_path, write_span_scores

        check_plot_path(plot)
        singles = singles or [values.get((b, 1), float("nan")) for b in range(total)]
        title = (f"{report.get('model', {}).get('spec', '')}: {report.get('method', '')}, "
                 f"{len(selected)} of {total} blocks removed{source}")
        written = write_span_scores(values, singles, sorted(selected), metric=metric,
                                    importance_label="importance (lower = safer to remove)", title=title, plot=plot)
        err.print(f"wrote {written}")
    if json_output:
        print_json({"metric": metric, "selected_blocks": sorted(selected), "spans": rows})
        return
    lengths = sorted({n for _, n in values})
    table = Table("block", *[f"{metric} L={n}" for n in lengths], title=f"span scores ({metric}{source}); * = removed")
    for first in sorted({f for f, _ in values}):
        cells = [f"{values[(first, n)]:.4f}" if (first, n) in values else "" for n in lengths]
        table.add_row(f"{first}{' *' if first in selected else ''}", *cells)
    out.print(table)
