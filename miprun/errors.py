"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import difflib


class MiprunError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line and exits 2."""


def closest(word: str, choices: list[str]) -> str | None:
    """The choice closest to ``word`` by spelling, or None when none is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(word: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = closest(word, choices)
    return f" (did you mean '{close}'?)" if close else ""
