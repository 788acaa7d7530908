"""Terminal output shared by the commands: messages and progress on stderr, results on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from miprun.progress import Reporter

err = Console(stderr=True)
out = Console()


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (no rich markup, safe for pipes)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class RichReporter(Reporter):
    """Pipeline progress as a rich progress display on stderr, one line per stage."""

    def __init__(self) -> None:
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=err, transient=False,
        )
        self.task = None

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, stage: str, total: int | None = None) -> None:
        """Add a progress line for ``stage``."""
        self.task = self.progress.add_task(stage, total=total)

    def advance(self, amount: int = 1) -> None:
        """Advance the current stage."""
        if self.task is not None:
            self.progress.advance(self.task, amount)

    def finish(self, stage: str, seconds: float) -> None:
        """Mark the current stage complete."""
        if self.task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self.task, total=task.total or 1, completed=task.total or 1,
                                 description=f"{stage} ✓")
