"""The ``miprun`` console script."""

from __future__ import annotations

import os
import sys

import typer

from miprun.cli.compare_cmd import compare
from miprun.cli.eval_cmd import eval_command
from miprun.cli.listing import list_plugins, list_strategies
from miprun.cli.run_cmd import run
from miprun.cli.scores_cmd import scores
from miprun.cli.select_cmd import select
from miprun.errors import MiprunError

app = typer.Typer(
    name="miprun",
    help="Make LLMs smaller by removing what carries little information (MI-PRUN and baselines).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("run")(run)
app.command("list")(list_strategies)
app.command("plugins")(list_plugins)
app.command("scores")(scores)
app.command("select")(select)
app.command("eval")(eval_command)
app.command("compare")(compare)


def main() -> None:
    """Entry point: run the app; a :class:`MiprunError` becomes one line on stderr and exit code 2."""
    # miprun shows its own progress; keep transformers' per-file bars out of the terminal
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()  # standalone mode: usage errors and exit codes are handled by click
    except MiprunError as exc:
        sys.stderr.write(f"miprun: error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
