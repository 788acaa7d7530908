"""Precomputed span tables: ``first_layer length mi`` rows read into :class:`SpanScores`.

Format: whitespace- or tab-separated columns; blank lines and lines starting with ``#`` are
skipped, as is anything after a ``#`` on a data line. An optional header row names the columns
(``first_layer``/``first``, ``length``, ``mi``/``value``, in any order); without one the columns are
taken in that order. ``first_layer`` is the 0-based first block of the span.
"""

from __future__ import annotations

from pathlib import Path

from miprun.contracts import SpanScores
from miprun.errors import MiprunError

_ALIASES = {
    "first_layer": "first", "first": "first", "layer": "first",
    "length": "length", "len": "length",
    "mi": "value", "value": "value",
}


def _is_number(token: str) -> bool:
    """Whether ``token`` parses as a float."""
    try:
        float(token)
    except ValueError:
        return False
    return True


def _header(tokens: list[str], where: str) -> list[str] | None:
    """Column roles named by a header row (no numeric cell), or None when the row is data."""
    if any(_is_number(t) for t in tokens):
        return None
    roles = [_ALIASES.get(t.lower()) for t in tokens]
    if sorted(r for r in roles if r) != ["first", "length", "value"] or len(tokens) != 3:
        shown = " ".join(tokens)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise MiprunError(f"{where}: header {shown!r} must name the columns first_layer, length and mi")
    return roles  # type: ignore[return-value]


def parse_span_table(text: str, source: str = "<table>") -> dict[tuple[int, int], float]:
    """Parse span-table text into ``{(first, length): value}``; bad rows are a one-line error."""
    values: dict[tuple[int, int], float] = {}
    roles: list[str] | None = None
    seen_row = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        tokens = line.split()
        if not seen_row:
            seen_row = True
            roles = _header(tokens, where)
            if roles is not None:
                continue
        if len(tokens) != 3:
            raise MiprunError(f"{where}: expected 3 columns (first_layer length mi), got {len(tokens)}")
        cells = dict(zip(roles or ["first", "length", "value"], tokens))
        try:
            first, length, value = int(cells["first"]), int(cells["length"]), float(cells["value"])
        except ValueError:
            raise MiprunError(
                f"{where}: {line!r} is not 'first_layer length mi' (two whole numbers and a number)"
            ) from None
        if first < 0 or length < 1:
            raise MiprunError(f"{where}: first_layer must be ≥ 0 and length ≥ 1, got {first} and {length}")
        if (first, length) in values and values[(first, length)] != value:
            raise MiprunError(f"{where}: span first={first} length={length} is listed twice with different values")
        values[(first, length)] = value
    if not values:
        raise MiprunError(f"{source}: no span rows found; expected 'first_layer length mi' columns")
    return values


def read_span_table(path: str | Path) -> dict[tuple[int, int], float]:
    """Read a span table file; a missing or unreadable file is a one-line :class:`MiprunError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MiprunError(f"score table not found: {path}; pass an existing file to --scores") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MiprunError(f"cannot read score table {path}: {exc}") from None
    return parse_span_table(text, str(path))


def load_span_scores(
    path: str | Path,
    num_blocks: int,
    *,
    missing: float | None = None,
    metric: str = "mi",
    redundant_when_high: bool = True,
) -> SpanScores:
    """:class:`SpanScores` over ``num_blocks`` blocks from a span table (MI: importance = −value).

    Spans absent from the table take ``missing``; without it, asking for one is an error. A table
    span reaching past ``num_blocks`` is an error (the table is for a different model).
    """
    if num_blocks < 1:
        raise MiprunError(f"the model needs at least one block, got {num_blocks}; pass --blocks T ≥ 1")
    values = read_span_table(path)
    for (first, length) in sorted(values):
        if first + length > num_blocks:
            raise MiprunError(
                f"{path}: span first={first} length={length} reaches past the {num_blocks} blocks; "
                f"check --blocks"
            )
    return SpanScores.from_table(
        values, num_blocks, metric=metric, redundant_when_high=redundant_when_high, missing=missing
    )
