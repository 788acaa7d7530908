"""Calibration samples: fixed-length token windows drawn reproducibly from a text source.

Sources: ``wikitext2`` (local ``wikitext-2/valid.txt`` in the data directory, else Hugging Face
``wikitext-2-raw-v1`` validation), ``c4``, ``ptb``, ``alpaca`` (Hugging Face datasets), a local
``.txt`` or ``.jsonl`` file, or ``self`` (text sampled from the model itself, so pruning needs no
data at all). Each window starts with the special tokens the tokenizer puts before every text
(:func:`leading_special_tokens`: a BOS where the tokenizer adds one). The same source, tokenizer,
sizes and seed always give the same token windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from miprun.data.datadir import local_file
from miprun.data.text import TABLE_SUFFIXES, check_text_file, hf_text, read_text_file
from miprun.errors import MiprunError, did_you_mean
from miprun.models.context import context_length
from miprun.models.devices import check_token_ids, input_device

_MAX_CHARS = 8_000_000


@dataclass
class Calibration:
    """Token windows ``input_ids`` (num_samples × seq_len) and a description of where they came from;
    ``starts``: where each window starts in the source's token stream (None for generated text)."""

    input_ids: Any
    source: dict[str, Any] = field(default_factory=dict)
    starts: list[int] | None = None


def _wikitext2() -> str:
    local = local_file("wikitext-2", "valid.txt")
    if local is not None:
        return local.read_text(encoding="utf-8")
    return hf_text("Salesforce/wikitext", "wikitext-2-raw-v1", "validation", "text", max_chars=_MAX_CHARS)


NAMED_SOURCES: dict[str, Callable[[], str]] = {
    "wikitext2": _wikitext2,
    "c4": lambda: hf_text(
        "allenai/c4", None, "validation", "text", max_chars=_MAX_CHARS,
        data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
    ),
    # the loading script of ptb_text_only no longer runs on datasets >= 4; its parquet export does
    "ptb": lambda: hf_text("ptb-text-only/ptb_text_only", "penn_treebank", "validation", "sentence", joiner=" ",
                           max_chars=_MAX_CHARS, attempts=[{"revision": "refs/convert/parquet"}]),
    "alpaca": lambda: hf_text("tatsu-lab/alpaca", None, "train", "text", max_chars=_MAX_CHARS),
}
"""Named calibration sources → text loader."""


_LAST_TOKENIZED: list[Any] = []  # [tokenizer, text, ids] of the last call


def _token_ids(tokenizer: Any, text: str) -> Any:
    """``text`` tokenized without special tokens; the last result is reused when the same tokenizer
    reads the same text again (a run draws its calibration, healing and check windows from one
    source: one tokenization instead of three)."""
    if _LAST_TOKENIZED and _LAST_TOKENIZED[0] is tokenizer and _LAST_TOKENIZED[1] == text:
        return _LAST_TOKENIZED[2]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    _LAST_TOKENIZED[:] = [tokenizer, text, ids]
    return ids


def leading_special_tokens(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before every text it encodes (Gemma's and Llama 2's
    BOS; none for SmolLM2 or GPT-2): every calibration window starts with them, as every input the
    model sees in use does — Gemma's hidden states without its BOS are far from those it was
    trained on (WikiText-2 perplexity about ten times higher)."""
    probe = "miprun calibration"
    plain = tokenizer(probe, add_special_tokens=False).input_ids
    encoded = tokenizer(probe).input_ids
    for i in range(len(encoded) - len(plain) + 1):
        if encoded[i : i + len(plain)] == plain:
            return [int(t) for t in encoded[:i]]
    return []


def _starts(total: int, num_samples: int, seq_len: int, seed: int, label: str) -> list[int]:
    """Where ``num_samples`` windows of ``seq_len`` tokens start in a stream of ``total`` (seeded)."""
    import torch

    if total < seq_len + 1:
        raise MiprunError(
            f"calibration source '{label}' has {total} tokens, fewer than --seq-len {seq_len}; "
            f"use a larger source or a shorter --seq-len"
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, total - seq_len, (num_samples,), generator=generator).tolist()


def _held_out_starts(total: int, num_samples: int, seq_len: int, seed: int, read: list[int]) -> list[int]:
    """Up to ``num_samples`` window starts (seeded) whose windows share no token with each other
    nor with the windows starting at ``read``; fewer where the stream has no room for more."""
    import torch

    edges = torch.zeros(total + 1, dtype=torch.int64)
    for start in read:
        edges[start] += 1
        edges[start + seq_len] -= 1
    taken = torch.cumsum(edges, 0)[:total] > 0
    before = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(taken.long(), 0)])
    free = (before[seq_len:total] - before[: total - seq_len] == 0).nonzero().flatten()  # starts < total − seq_len
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for candidate in free[torch.randperm(free.numel(), generator=generator)].tolist():
        if all(abs(candidate - other) >= seq_len for other in chosen):
            chosen.append(candidate)
            if len(chosen) == num_samples:
                break
    return chosen


def _apart(starts: list[int], avoid: list[int], count: int, total: int, seq_len: int,
           seed: int) -> tuple[list[int], dict[str, int]]:
    """``starts`` with each of the first ``count`` windows that are not ``avoid``'s own and overlap
    one of them moved to where no window of ``avoid`` (nor another moved one) reaches; those the
    stream has no room for stay. Returns the starts and the counts (``redrawn``,
    ``still_overlapping``)."""
    own = set(avoid)
    held = [i for i, s in enumerate(starts) if s not in own][:count]
    clash = [i for i in held if any(abs(starts[i] - a) < seq_len for a in avoid)]
    if not clash:
        return starts, {"redrawn": 0, "still_overlapping": 0}
    fresh = _held_out_starts(total, len(clash), seq_len, seed, list(avoid))
    moved = list(starts)
    for index, start in zip(clash, fresh):
        moved[index] = start
    return moved, {"redrawn": len(fresh), "still_overlapping": len(clash) - len(fresh)}


def _self_generated(model: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int) -> Any:
    import torch

    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_id is None:
        raise MiprunError("--calib self needs a tokenizer with a BOS or EOS token")
    torch.manual_seed(seed)
    device = input_device(model)
    prompt = torch.full((num_samples, 1), start_id, dtype=torch.long, device=device)
    # no padding happens (equal lengths); a pad id other than the prompt token avoids a false warning
    pad_id = next((t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t not in (None, start_id)), start_id)
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=50, temperature=1.0,
            max_new_tokens=seq_len, min_new_tokens=seq_len, pad_token_id=pad_id,
        )
    return out[:, 1 : seq_len + 1].cpu()


def check_calibration(source: str, *, num_samples: int, seq_len: int) -> None:
    """What a calibration request can be refused for before any model is loaded: its sizes, an
    unknown source name (with did-you-mean) or a file that does not exist — one line each."""
    if num_samples < 1 or seq_len < 2:
        raise MiprunError(f"need --num-samples ≥ 1 and --seq-len ≥ 2, got {num_samples} and {seq_len}")
    if source in NAMED_SOURCES or source == "self":
        return
    path = Path(source).expanduser()
    if path.suffix not in (".txt", ".jsonl", ".json", *TABLE_SUFFIXES) and not path.exists():
        choices = [*NAMED_SOURCES, "self"]
        raise MiprunError(
            f"unknown calibration source '{source}'{did_you_mean(source, choices)}; "
            f"use one of {', '.join(choices)} or a .txt, .jsonl, .json, .csv, .tsv or .parquet file"
        )
    check_text_file(path, what="calibration file")


def load_calibration(
    source: str,
    tokenizer: Any,
    *,
    num_samples: int,
    seq_len: int,
    seed: int,
    model: Any = None,
    held_out_from: Sequence[Calibration] = (),
    apart_from: Calibration | None = None,
    apart_count: int | None = None,
) -> Calibration:
    """Draw ``num_samples`` windows of ``seq_len`` tokens from ``source`` with ``seed``: each is the
    tokenizer's leading special tokens (:func:`leading_special_tokens`, recorded as
    ``source["prefix_tokens"]``) and then the text from its start.

    :param held_out_from: windows already drawn from the same source (the run's calibration and
        healing windows): the new windows share no token with them nor with each other, as far as
        the source has room; where it has not, the rest are drawn as usual and ``source["held_out"]``
        says how many of the windows are disjoint (text sampled from the model is always new).
    :param apart_from: windows drawn before from the same source (the run's calibration windows,
        which the healing windows of the same seed repeat first): of the new windows that are not
        one of them, the first ``apart_count`` — those the selection's healing preview fits on
        (:func:`miprun.engine.preview_sequences`), to judge sets on the calibration windows — are
        redrawn, where they share tokens with a calibration window, where none reaches, as far as
        the source has room; so the preview is held out by token, not only by window
        (``source["apart_from"]`` counts the redrawn windows and any left overlapping). The other
        windows stay as drawn.
    :param apart_count: how many windows ``apart_from`` keeps apart; as many as it has when None."""
    import torch

    check_calibration(source, num_samples=num_samples, seq_len=seq_len)
    limit = context_length(model)
    if limit is not None and seq_len > limit:
        raise MiprunError(f"--seq-len {seq_len} is longer than the model's context ({limit} tokens); "
                          f"pass --seq-len {limit} or less")
    info: dict[str, Any] = {"name": source, "num_samples": num_samples, "seq_len": seq_len, "seed": seed}
    if source == "self":
        if model is None:
            raise MiprunError("--calib self needs the model to generate text")
        from miprun.models.adapters import adapter_for
        from miprun.models.finite import check_weights

        check_weights(adapter_for(model))  # a damaged model would sample from NaN probabilities
        ids = _self_generated(model, tokenizer, num_samples, seq_len, seed)
        info["kind"] = "model-generated"
        return Calibration(ids, info)
    if source in NAMED_SOURCES:
        text = NAMED_SOURCES[source]()
        info["kind"] = "named"
        local = local_file("wikitext-2", "valid.txt") if source == "wikitext2" else None
        if local is not None:
            info["path"] = str(local)
    else:
        from miprun.data.chat import chat_template

        path = Path(source).expanduser()
        chat = chat_template(tokenizer)
        text = read_text_file(path, what="calibration file", chat=chat)
        info.update(kind="file", path=str(path.resolve()))
        if chat is not None and chat.record() is not None:
            info["chat_template"] = chat.record()
    ids = _token_ids(tokenizer, text[:_MAX_CHARS])
    starts = _starts(ids.numel(), num_samples, seq_len, seed, source)
    info["source_tokens"] = int(ids.numel())
    if held_out_from:
        read = [start for drawn in held_out_from for start in drawn.starts or []]
        disjoint = _held_out_starts(ids.numel(), num_samples, seq_len, seed, read)
        starts = disjoint + starts[: num_samples - len(disjoint)]
        info["held_out"] = {"windows": num_samples, "disjoint": len(disjoint), "source_tokens": int(ids.numel()),
                            "tokens_read_before": len(read) * seq_len}
    if apart_from is not None and apart_from.starts:
        count = len(apart_from.starts) if apart_count is None else apart_count
        starts, info["apart_from"] = _apart(starts, apart_from.starts, count, ids.numel(), seq_len, seed)
    prefix = leading_special_tokens(tokenizer)
    prefix = prefix if len(prefix) < seq_len else []
    info["prefix_tokens"] = prefix
    head = torch.tensor(prefix, dtype=ids.dtype)
    windows = torch.stack([torch.cat([head, ids[start : start + seq_len - len(prefix)]]) for start in starts])
    check_token_ids(windows, model, f"calibration source '{source}'")
    return Calibration(windows, info, starts)
