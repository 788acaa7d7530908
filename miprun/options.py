"""Strategy options as users write them: ``KIND.KEY=VALUE`` (``miprun run -o``) and
``METHOD.KIND.KEY=VALUE`` (``miprun compare -o``)."""

from __future__ import annotations

import ast
import numbers
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from miprun.errors import MiprunError
from miprun.hookspecs import KINDS

ARGUMENT_KINDS: dict[str, tuple[Any, str]] = {
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "a whole number"),
    "number": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "path": (lambda v: isinstance(v, (str, os.PathLike)), "a string or a path"),
    "flag": (lambda v: isinstance(v, bool), "True or False"),
    "mapping": (lambda v: isinstance(v, Mapping), "a dict"),
    "names": (lambda v: isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
              "a comma list or a list of strings"),
}
"""What a keyword argument of the Python API can be (:func:`check_arguments`): test and description."""


def check_arguments(function: str, arguments: dict[str, tuple[Any, str]], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """One-line error when an argument of ``function`` is not of its kind (``arguments``: name →
    (value, kind of :data:`ARGUMENT_KINDS`)); the names in ``optional`` may also be None. The CLI's
    options are typed by Typer; this gives Python callers the same clear refusal instead of a
    ``TypeError`` deep inside a run. Returns the values with NumPy and other integral or real
    scalars as Python ``int`` / ``float`` (what the report records)."""
    values: dict[str, Any] = {}
    for name, (value, kind) in arguments.items():
        if value is None and name in optional:
            values[name] = None
            continue
        test, wanted = ARGUMENT_KINDS[kind]
        if not test(value):
            raise MiprunError(f"{function}(): {name} must be {wanted}{' or None' if name in optional else ''}, got {value!r}")
        values[name] = int(value) if kind == "int" else value if kind != "number" or type(value) in (int, float) else float(value)
    return values


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The ``--dtype`` values miprun loads and computes in (``auto``: as the checkpoint stores them)."""


def check_dtype(dtype: Any) -> str:
    """Return ``dtype`` if it is one of :data:`DTYPES`, else a one-line error with a did-you-mean."""
    from miprun.errors import did_you_mean

    if dtype not in DTYPES:
        raise MiprunError(f"unknown dtype '{dtype}'{did_you_mean(str(dtype), list(DTYPES))}; choose one of: {', '.join(DTYPES)}")
    return dtype


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


def _type_name(kind: Any) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(kind, getattr(kind, "__name__", str(kind)))


def _convert_to(kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (int, float, bool or str); raises ValueError when it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if isinstance(value, (str, int)) and str(value).strip().lower() in words:
            return words[str(value).strip().lower()]
        raise ValueError
    if kind is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ValueError
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)  # int, float or numeric text; ValueError otherwise
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError
        return number
    if kind is str:
        if isinstance(value, (bool, type(None))):
            raise ValueError
        return str(value)
    return value


def convert_option(owner: str, key: str, value: Any, annotation: Any) -> Any:
    """``value`` converted to the type the factory declares for option ``key`` (``int``,
    ``float``, ``bool``, ``str``, unions of them and ``None``); other annotations pass the value
    through. A value of none of the declared types is a one-line :class:`MiprunError` naming the
    option, what it accepts and what was given."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    kinds = [a for a in args if a in (int, float, bool, str)]
    allows_none = type(None) in args
    if len(kinds) != len([a for a in args if a is not type(None)]):
        return value  # a type this layer does not know: the factory checks it
    if allows_none and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))):
        return None
    if value is None:
        pass
    else:
        for kind in kinds:  # declared order: int | str tries the number first
            try:
                return _convert_to(kind, value)
            except (TypeError, ValueError):
                continue
    accepted = " or ".join([_type_name(k) for k in kinds] + (["none"] if allows_none else []))
    raise MiprunError(f"{owner}: option '{key}' must be {accepted}, got {value!r}")
