"""``miprun compare``: every method on one model, one calibration sample, one evaluation protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from miprun.cli.console import err, out, progress_reporter
from miprun.errors import MiprunError
from miprun.methods import DEFAULT_METHODS
from miprun.models.embedded import DEFAULT_MODEL, MODEL_HELP


def compare(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = DEFAULT_MODEL,
    calib: Annotated[str, typer.Option(help="Calibration source shared by all methods (wikitext2, c4, a file, …)")] = "wikitext2",
    prune: Annotated[str, typer.Option("--prune", "-n", help="Blocks to remove: N, or a comma list for a pruning curve (2,4,6)")] = "6",
    methods: Annotated[str, typer.Option(help="Comma list of named methods (mi-prun, mi-greedy, mi-prun-local, mi-brute-force, shortgpt, angular, angular-last, sleb, ppl, taylor, magnitude, laco, random) or combinations SCORER[:ESTIMATOR]+SELECTOR[+SURGEON] (e.g. linear-cka+greedy)")] = ",".join(DEFAULT_METHODS),
    eval_ppl: Annotated[str, typer.Option("--eval", help="Perplexity data sets, comma list ('' for none)")] = "wikitext2",
    tasks: Annotated[Optional[str], typer.Option(help="lm-eval tasks, comma list or 'paper'")] = None,
    limit: Annotated[Optional[float], typer.Option(help="Score only the first N documents of each task")] = None,
    num_samples: Annotated[int, typer.Option(help="Calibration sequences")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration sequence")] = 256,
    seed: Annotated[int, typer.Option(help="Seed for the calibration sample and every seeded strategy")] = 0,
    eval_seq_len: Annotated[Optional[int], typer.Option(help="Perplexity window length (default min(2048, context))")] = None,
    eval_max_windows: Annotated[Optional[int], typer.Option(help="Perplexity on the first N windows only (quick runs)")] = None,
    option: Annotated[list[str], typer.Option("--option", "-o", help="Method option METHOD.KIND.KEY=VALUE, repeatable")] = [],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the rows as JSON to this file ('-' for stdout)")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the table as Markdown to this file")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Curve mode: PNG path (data written beside it as .csv); default compare-curve.png")] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Curve mode without the PNG (the table and --json only)")] = False,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16")] = "auto",
    device_map: Annotated[Optional[str], typer.Option(help="accelerate device map, e.g. auto")] = None,
    heal: Annotated[Optional[str], typer.Option(help="Healer for the healed row (METHOD+heal) beside each method's plain row: the default 'linear', 'replaceme', or 'none' for plain rows only (docs/healing.md)")] = None,
    heal_samples: Annotated[int, typer.Option(help="Calibration sequences the healing fit reads")] = 128,
) -> None:
    """Prune one model with several methods on the same calibration data and compare quality and cost.

    The dense model is the first row. With several --prune values (a pruning curve) a PNG of
    perplexity against blocks removed is written, with its data as CSV beside it.
    """
    import json

    from miprun.compare import compare as run_compare
    from miprun.compare import (
        parse_depths,
        table_columns,
        table_rows,
        to_json,
        to_markdown,
    )
    from miprun.evaluation import parse_limit
    from miprun.methods import parse_methods
    from miprun.models.loading import source_locations
    from miprun.options import parse_method_options
    from miprun.output import check_file_output, write_text_atomically
    from miprun.plotting import check_plot_path, require_matplotlib, write_curve

    specs = parse_methods(methods)
    depths = parse_depths(prune)
    curve = len(depths) > 1
    if plot is not None and not curve:
        raise MiprunError(f"--plot draws the pruning curve over several --prune values (e.g. --prune 2,4,6); "
                          f"--prune {prune} gives one point: drop --plot or add depths")
    # every file this run will write is checked before hours of pruning, not after
    sources = source_locations(model)
    for flag, path in (("--json", json_path), ("--markdown", markdown)):
        if path is not None and str(path) != "-":
            check_file_output(path, flag, sources)
    if curve and not no_plot:
        require_matplotlib()
        picture = plot or Path("compare-curve.png")
        check_plot_path(picture, sources=sources)
        check_file_output(picture.with_suffix(".csv"), "--plot (its .csv beside it)", sources)
    ppl = tuple(p.strip() for p in eval_ppl.split(",") if p.strip())
    task_list = tasks or ()

    def save_partial(partial: dict) -> None:
        # keep finished rows on disk while a long comparison runs ("complete": false until the end)
        if json_path is not None and str(json_path) != "-":
            write_text_atomically(json_path, json.dumps(to_json(partial), indent=2, default=str) + "\n")
    with progress_reporter() as reporter:
        report = run_compare(
            model, prune=depths, methods=specs, calib=calib, num_samples=num_samples, seq_len=seq_len, seed=seed,
            ppl=ppl, tasks=task_list, limit=parse_limit(limit),
            eval_seq_len=eval_seq_len, eval_max_windows=eval_max_windows, options=parse_method_options(option),
            dtype=dtype, device_map=device_map, log=lambda line: err.print(f"[dim]{line}[/dim]"), on_row=save_partial,
            heal=heal, heal_samples=heal_samples, reporter=reporter,
        )
    data = to_json(report)
    if json_path is not None:
        text = json.dumps(data, indent=2, default=str) + "\n"
        if str(json_path) == "-":
            typer.echo(text, nl=False)
        else:
            write_text_atomically(json_path, text)
            err.print(f"wrote {json_path}")
    if markdown is not None:
        write_text_atomically(markdown, to_markdown(report))
        err.print(f"wrote {markdown}")
    if curve and not no_plot:
        png, csv_path = write_curve(report, plot or Path("compare-curve.png"))
        err.print(f"wrote {png} and {csv_path}")
    if str(json_path) != "-":
        table = Table(title=f"miprun compare — {report['model'].get('spec', model)} ({report['num_blocks']} blocks)")
        for column in table_columns(report):
            table.add_column(column, justify="left" if column in ("method", "removed blocks") else "right", overflow="fold")
        for cells in table_rows(report):
            table.add_row(*cells)
        out.print(table)
