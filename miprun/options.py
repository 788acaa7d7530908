"""Strategy options as users write them: ``KIND.KEY=VALUE`` (``miprun run -o``) and
``METHOD.KIND.KEY=VALUE`` (``miprun compare -o``)."""

from __future__ import annotations

import ast
from typing import Any

from miprun.errors import MiprunError
from miprun.hookspecs import KINDS


def parse_value(text: str) -> Any:
    """``"2"`` → 2, ``"0.5"`` → 0.5, ``"true"`` → True, ``"none"`` → None; anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (int, float)) else text


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """Group ``KIND.KEY=VALUE`` items by strategy kind."""
    grouped: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        kind, dot, name = key.partition(".")
        if not sep or not dot or kind not in KINDS or not name:
            raise MiprunError(
                f"option '{item}' is not KIND.KEY=VALUE with KIND one of {', '.join(KINDS)} "
                f"(e.g. --option estimator.alpha=2)"
            )
        grouped.setdefault(kind, {})[name] = parse_value(value)
    return grouped


def parse_method_options(items: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``METHOD.KIND.KEY=VALUE`` items → ``{method: {kind: {key: value}}}``."""
    grouped: dict[str, list[str]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot:
            raise MiprunError(f"option '{item}' is not METHOD.KIND.KEY=VALUE (e.g. sleb.selector.batch_size=8)")
        grouped.setdefault(method, []).append(rest)
    return {method: parse_options(rest) for method, rest in grouped.items()}
