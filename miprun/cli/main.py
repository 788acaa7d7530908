"""The ``miprun`` console script: one Typer app, and the one error path of every command.

A :class:`~miprun.errors.MiprunError` raised anywhere under a command becomes one line on stderr,
``miprun: error: <message>``, and exit code 2 — the same for every command, whether the app runs
from the console script or from Typer's test runner.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import unicodedata
from typing import Any, Callable

import typer

from miprun.cli.cache_cmd import cache
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


def _one_line(message: str) -> str:
    """``message`` with control characters (a user's ``\\r`` or ``\\n`` echoed back) escaped, so
    that it stays one line on any terminal."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in message)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``command`` so that a :class:`MiprunError` ends it with one ``miprun: error:`` line, exit 2,
    and an interruption (Ctrl-C, or SIGTERM: see :func:`main`) with one line, exit 130, after every
    ``finally`` and cleanup has run."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MiprunError as exc:
            typer.echo(f"miprun: error: {_one_line(str(exc))}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("miprun: interrupted; nothing was written (partial outputs were removed)", err=True)
            raise typer.Exit(130) from None

    return wrapper


for _name, _command in (("run", run), ("list", list_strategies), ("plugins", list_plugins), ("scores", scores),
                        ("select", select), ("eval", eval_command), ("compare", compare), ("cache", cache)):
    app.command(_name)(one_line_errors(_command))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the ``miprun`` console script."""
    # miprun shows its own progress; keep transformers' per-file bars out of the terminal
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # loading/saving shard bars; miprun reports its own stages
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's kill cleans up like Ctrl-C
    if len(sys.argv) <= 1:
        app(prog_name="miprun")  # `miprun` alone: click shows the help
    try:
        code = app(prog_name="miprun", standalone_mode=False)
    except typer.Abort:
        typer.echo("miprun: interrupted", err=True)
        code = 130
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        # a misspelt option, a missing or malformed value: one line, as every other error
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "miprun"
        typer.echo(f"miprun: error: {_one_line(exc.format_message().rstrip('.'))}; see '{command} --help'", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


def _is_usage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is click's ``UsageError`` (the click that Typer runs on: Typer ≥ 0.26 vendors
    its own, so the class is recognised by its hierarchy's names rather than imported)."""
    return any(kind.__name__ == "UsageError" and kind.__module__.endswith("click.exceptions") for kind in type(exc).__mro__)


if __name__ == "__main__":
    main()
