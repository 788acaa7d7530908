"""Progress of a run: stage start, advance and finish callbacks, and the timing of each stage.

The engine and the run report to a :class:`Reporter`; the default one does nothing. The CLI passes
one that draws on the terminal (:mod:`miprun.cli.console`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Reporter:
    """Progress callbacks; the default does nothing."""

    def start(self, stage: str, total: int | None = None) -> None:
        """A stage begins; ``total`` units of work follow (None when unknown)."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` units of the current stage are done."""

    def finish(self, stage: str, seconds: float) -> None:
        """A stage ended after ``seconds``."""

    def note(self, line: str) -> None:
        """Something the user should read once: a default that did not apply, a warning."""


@contextmanager
def stage(name: str, timings: dict[str, float], reporter: Reporter, total: int | None = None) -> Iterator[None]:
    """Time one stage into ``timings[name]`` and report its start and end."""
    reporter.start(name, total)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 4)
    reporter.finish(name, timings[name])
