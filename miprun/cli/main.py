"""The ``miprun`` console script."""

from __future__ import annotations

import sys

import typer

from miprun.cli.listing import list_plugins, list_strategies
from miprun.cli.run_cmd import run
from miprun.cli.scores_cmd import scores
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


def main() -> None:
    """Entry point: run the app; a :class:`MiprunError` becomes one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except MiprunError as exc:
        sys.stderr.write(f"miprun: error: {exc}\n")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("miprun: aborted\n")
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
