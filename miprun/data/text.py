"""Reading text: local ``.txt`` / ``.jsonl`` (optionally gzipped) files and Hugging Face data sets.

One home for what the calibration sources (:mod:`miprun.data.calibration`) and the perplexity data
sets (:mod:`miprun.evaluation.perplexity`) both need.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from miprun.errors import MiprunError

TEXT_FIELDS = ("text", "page", "content", "sentence")
"""JSON fields tried in turn for a row's text."""

CHAT_FIELDS = ("messages", "conversations", "conversation")
"""Fields holding a conversation: a list of turns, each a string or an object whose ``content``
(OpenAI-style; a string or a list of ``{"type": "text", "text": …}`` parts), ``value`` (ShareGPT)
or ``text`` is its text."""

PROMPT_FIELDS = ("instruction", "input", "output", "prompt", "response", "completion", "question", "answer",
                 "context", "chosen")
"""Fields of instruction data (Alpaca's instruction/input/output, prompt/response pairs): a row's
text is all of those it has, in the row's order."""


def hf_text(
    path: str,
    name: str | None,
    split: str,
    column: str,
    *,
    joiner: str = "\n\n",
    max_rows: int | None = None,
    max_chars: int | None = None,
    attempts: Iterable[dict[str, Any]] = (),
    **kwargs: Any,
) -> str:
    """Rows of ``column`` of a Hugging Face data set joined with ``joiner``.

    :param max_rows: keep only the first rows; ``max_chars``: stop once this many characters are read.
    :param attempts: further ``load_dataset`` keyword sets tried in turn when the first load
        (with ``kwargs``) fails — e.g. a parquet revision for a data set whose loading script no
        longer runs.
    :raises MiprunError: one line naming the data set and the fix when nothing loads (no network).
    """
    import datasets

    data, error = None, None
    for attempt in [kwargs, *attempts]:
        try:
            data = datasets.load_dataset(path, name, split=split, **attempt)
            break
        except Exception as exc:  # network, retired loading scripts, missing data set, …
            error = exc
    if data is None:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MiprunError(
            f"no local copy and cannot load '{path}' from Hugging Face ({first}); set MIPRUN_DATA_DIR to a "
            f"data directory or pass a local .txt/.jsonl file"
        ) from error
    pieces, size = [], 0
    for number, row in enumerate(data):
        if max_rows is not None and number >= max_rows:
            break
        pieces.append(row[column])
        size += len(row[column])
        if max_chars is not None and size > max_chars:
            break
    return joiner.join(pieces)


def _turn_text(turn: Any) -> str:
    """The text of one conversation turn (see :data:`CHAT_FIELDS`); '' when it has none."""
    if isinstance(turn, str):
        return turn
    if not isinstance(turn, dict):
        return ""
    content = next((turn[k] for k in ("content", "value", "text") if k in turn), "")
    if isinstance(content, list):  # multimodal parts: their text only
        content = "\n".join(part.get("text", "") for part in content if isinstance(part, dict)
                            and isinstance(part.get("text"), str))
    return content if isinstance(content, str) else ""


def _line_text(row: Any, where: str, chat: Any = None) -> str:
    """A row's text: a string as it is; an object's first :data:`TEXT_FIELDS` string, else its
    conversation (:data:`CHAT_FIELDS`) as ``chat`` renders it (a chat template; None or a refusal:
    its turns' texts), else its instruction fields (:data:`PROMPT_FIELDS`), each joined by blank
    lines, else its prose (:func:`_prose`: ARC's question and choices, PIQA's goal and solutions —
    not their ids or labels), else its first string field."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise MiprunError(f"{where}: expected a JSON object or string per line")
    field = next((k for k in TEXT_FIELDS if isinstance(row.get(k), str)), None)
    if field is not None:
        return row[field]
    turns = next((row[k] for k in CHAT_FIELDS if isinstance(row.get(k), list)), None)
    if turns is not None:
        rendered = chat(turns) if chat is not None else None
        return rendered if rendered is not None else "\n\n".join(text for text in map(_turn_text, turns) if text)
    prompt = [v for k, v in row.items() if k in PROMPT_FIELDS and isinstance(v, str) and v]
    if prompt:
        return "\n\n".join(prompt)
    prose = list(_prose(row))
    if prose:
        return "\n\n".join(prose)
    field = next((k for k, v in row.items() if isinstance(v, str)), None)
    if field is None:
        raise MiprunError(f"{where}: the line has no text field (expected one of {', '.join(TEXT_FIELDS)}, "
                          f"a conversation under {' or '.join(CHAT_FIELDS)}, or instruction fields such as "
                          f"{', '.join(PROMPT_FIELDS[:3])})")
    return row[field]


def _json_array(path: Path, opener: Any) -> list[Any] | None:
    """The rows of a ``.json`` file holding one JSON array (Alpaca's ``alpaca_data.json``), or
    None when the file is JSON lines (or anything else)."""
    if [s for s in path.suffixes if s != ".gz"][-1:] != [".json"]:
        return None
    with opener(path, "rt", encoding="utf-8") as handle:
        start = handle.read(4096).lstrip()
    if not start.startswith("["):
        return None
    with opener(path, "rt", encoding="utf-8") as handle:
        try:
            rows = json.load(handle)
        except json.JSONDecodeError as exc:
            raise MiprunError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return rows if isinstance(rows, list) else None


def read_jsonl(path: Path, *, max_rows: int | None = None, chat: Any = None) -> str:
    """The text of every line of a ``.jsonl`` / ``.json`` (or ``.gz``) file, joined by blank lines;
    a ``.json`` file may also hold one array of rows.

    Each row is a string or an object (its text: :func:`_line_text` — a text field, a
    conversation, rendered by ``chat`` where given, instruction fields). Bad lines raise
    :class:`MiprunError` naming the file and line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    rows = _json_array(path, opener)
    if rows is not None:
        texts = (_line_text(row, f"{path}[{number}]", chat) for number, row in enumerate(rows))
        return "\n\n".join([text for text in texts if text][:max_rows])
    pieces = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MiprunError(f"{path}:{number} is not valid JSON ({exc.msg})") from exc
            text = _line_text(row, f"{path}:{number}", chat)
            if text:
                pieces.append(text)
            if max_rows is not None and len(pieces) >= max_rows:
                break
    return "\n\n".join(pieces)


TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
"""Tabular files whose rows are read as JSON objects are (:func:`read_table`)."""


def _prose(value: Any) -> Iterator[str]:
    """Every string in ``value`` (nested objects and lists included, in order) that contains a
    space: the sentences of a row whose fields miprun does not know by name, without its ids,
    labels and keys (single tokens)."""
    if isinstance(value, str):
        if " " in value.strip():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _prose(item)
    elif isinstance(value, list):
        for item in value:
            yield from _prose(item)


def read_table(path: Path, *, chat: Any = None) -> str:
    """The text of every row of a ``.csv`` / ``.tsv`` (header row first) or ``.parquet`` file (a
    data set's files as the Hugging Face hub stores them), each row's text found as for a JSON
    object (:func:`_line_text`), joined by blank lines."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow comes with datasets
            raise MiprunError(f"reading '{path}' needs pyarrow (pip install pyarrow)") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise MiprunError(f"cannot read '{path}' as Parquet: {exc}") from None
    else:
        import csv

        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))
    texts = (_line_text(row, f"{path} row {number}", chat) for number, row in enumerate(rows, 1))
    return "\n\n".join(text for text in texts if text)


def is_jsonl(path: Path) -> bool:
    """Whether ``path`` names a JSON-lines file (``.jsonl``, ``.json``, either gzipped)."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return bool(suffixes) and suffixes[-1] in (".jsonl", ".json")


def check_text_file(path: Path, *, what: str = "text file") -> None:
    """Raise :class:`MiprunError` naming ``what`` when ``path`` is not an existing regular file."""
    if path.is_dir():
        raise MiprunError(f"{what} '{path}' is a directory; name one file in it (.txt, .jsonl, .json, .csv or .parquet)")
    if path.exists() and not path.is_file():
        raise MiprunError(f"{what} '{path}' is not a regular file (a device, pipe or socket); name a text file")
    if not path.is_file():
        raise MiprunError(f"{what} '{path}' does not exist")


def read_text_file(path: Path, *, what: str = "text file", chat: Any = None) -> str:
    """Text of a plain text file, a JSON-lines / JSON file (:func:`read_jsonl`) or a table
    (:func:`read_table`); ``chat`` renders conversations (:class:`miprun.data.chat.ChatTemplate`).

    :raises MiprunError: when the file does not exist (``what`` names it in the message).
    """
    check_text_file(path, what=what)
    try:
        if path.suffix in TABLE_SUFFIXES:
            text = read_table(path, chat=chat)
        else:
            text = read_jsonl(path, chat=chat) if is_jsonl(path) else path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MiprunError(f"{what} '{path}' is not UTF-8 text (byte {exc.start} cannot be decoded); "
                          f"pass a text or JSON-lines file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MiprunError(f"cannot read {what} '{path}': {exc}") from None
    if "\x00" in text:
        raise MiprunError(f"{what} '{path}' contains NUL bytes: it looks like a binary file; pass a text file")
    return text
