"""Terminal output shared by the commands: messages and progress on stderr, results on stdout."""

from __future__ import annotations

import json
import sys
import threading
import time
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

    def note(self, line: str) -> None:
        """Print ``line`` above the progress display."""
        self.progress.console.print(f"miprun: {line}", markup=False, highlight=False)


class LogReporter(Reporter):
    """Progress for logs (stderr not a terminal: ``nohup``, batch schedulers, CI): a line when a
    stage starts, a line at most every ``every`` seconds while it runs, and a line when it ends
    with its time — plain text, flushed at once."""

    def __init__(self, stream: Any = None, every: float = 30.0) -> None:
        self.stream = stream
        self.every = every
        self.stage: str | None = None
        self.done = 0
        self.total: int | None = None
        self.started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LogReporter":
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _line(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"miprun: {text}\n")
        stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            if self.stage is not None:
                of = f" ({self.done}/{self.total})" if self.total else ""
                self._line(f"{self.stage} running, {time.perf_counter() - self.started:.0f} s{of}")

    def start(self, stage: str, total: int | None = None) -> None:
        """Print the stage's start line."""
        self.stage, self.done, self.total, self.started = stage, 0, total, time.perf_counter()
        self._line(f"{stage} started" + (f" ({total} steps)" if total else ""))

    def advance(self, amount: int = 1) -> None:
        """Count progress for the periodic line."""
        self.done += amount

    def finish(self, stage: str, seconds: float) -> None:
        """Print the stage's finish line with its time."""
        self.stage = None
        self._line(f"{stage} done in {seconds:.1f} s")

    def note(self, line: str) -> None:
        """Print ``line`` as a log line."""
        self._line(line)


def progress_reporter() -> RichReporter | LogReporter:
    """Rich progress on a terminal, plain log lines otherwise."""
    return RichReporter() if err.is_terminal else LogReporter()
