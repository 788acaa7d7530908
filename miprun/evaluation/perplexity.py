"""Perplexity with one protocol for every model and method.

Protocol (see docs/evaluation.md):

1. The evaluation text is read whole (``wikitext2`` = the byte-exact ``wiki.test.raw``) and
   tokenized in one call without special tokens.
2. The token stream is cut into consecutive, non-overlapping chunks. When the model has a prefix
   token (the tokenizer's BOS, else its EOS — the same prefix lm-eval uses for rolling
   log-likelihoods), every window is ``[prefix] + chunk`` with ``chunk`` of ``seq_len - 1`` tokens,
   so *every* text token is predicted exactly once. Without a prefix (``add_bos=False``) a window
   is ``seq_len`` text tokens and its first token is context only.
3. The last, shorter chunk is kept (it is scored, not padded).
4. Per-token negative log-likelihoods come from ``log_softmax`` of float32 logits; they are summed
   in float64 over all windows, and perplexity = ``exp(total NLL / scored tokens)`` (a
   token-weighted mean, not a mean of per-window perplexities).
5. ``seq_len`` defaults to the smaller of 2048 and the model's context length.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from miprun.data.datadir import local_file
from miprun.data.text import TABLE_SUFFIXES, hf_text, read_jsonl, read_text_file
from miprun.errors import MiprunError, did_you_mean
from miprun.models.context import context_length
from miprun.models.devices import input_device
from miprun.models.layerwise import layerwise_loader
from miprun.models.sweep import sweep_logits

DEFAULT_SEQ_LEN = 2048

DATASETS = {
    "wikitext2": "WikiText-2 raw test (wikitext-2-raw/wiki.test.raw; the text lm-eval's wikitext uses)",
    "wikitext2-tokenized": "WikiText-2 v1 test, tokenized with <unk> (wikitext-2/test.txt)",
    "c4": "C4 en validation, first 1100 documents joined by blank lines (allenai/c4 shard 0)",
    "ptb": "Penn Treebank test sentences joined by spaces (ptb_text_only)",
    "paper-tasks": "The paper's ten task sets as running text, examples interleaved across tasks (local data directory)",
}
"""Named perplexity data sets; any local ``.txt`` / ``.jsonl`` path is accepted too."""


@dataclass
class PerplexityResult:
    """Outcome of :func:`perplexity`; ``asdict`` gives the JSON form."""

    dataset: str
    source: str
    seq_len: int
    add_bos: bool
    windows: int
    total_windows: int
    tokens: int
    nll_sum: float
    mean_nll: float
    perplexity: float
    words: int | None
    word_perplexity: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


# --------------------------------------------------------------------------------------- text


def check_dataset(dataset: str) -> None:
    """Raise :class:`MiprunError` unless ``dataset`` is a named set or an existing local file."""
    if dataset in DATASETS:
        return
    path = Path(dataset).expanduser()
    if path.is_file():
        return
    if path.suffix in (".txt", ".raw", ".jsonl", ".json", *TABLE_SUFFIXES) or "/" in dataset:
        raise MiprunError(f"perplexity file '{dataset}' does not exist")
    raise MiprunError(
        f"unknown perplexity data set '{dataset}'{did_you_mean(dataset, list(DATASETS))}; "
        f"use one of {', '.join(DATASETS)} or a path to a .txt, .jsonl, .json, .csv, .tsv or .parquet file"
    )


def load_text(dataset: str) -> tuple[str, str]:
    """Return ``(text, source)`` for a named data set or a local ``.txt``/``.jsonl`` file.

    Named sets are read from the data directory when present (see ``miprun.data.datadir``), from
    Hugging Face ``datasets`` otherwise. ``source`` says which file or upstream name was used.
    """
    check_dataset(dataset)
    path = Path(dataset).expanduser()
    if dataset not in DATASETS:
        return read_text_file(path, what="perplexity file"), str(path.resolve())
    if dataset == "wikitext2":
        found = local_file("wikitext-2-raw", "wiki.test.raw")
        if found:
            return found.read_text(encoding="utf-8"), str(found)
        # The rows of the HF set are the lines of wiki.test.raw with their newlines.
        return hf_text("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text", joiner=""), "hf:wikitext/wikitext-2-raw-v1:test"
    if dataset == "wikitext2-tokenized":
        found = local_file("wikitext-2", "test.txt")
        if found:
            return found.read_text(encoding="utf-8"), str(found)
        return hf_text("Salesforce/wikitext", "wikitext-2-v1", "test", "text", joiner=""), "hf:wikitext/wikitext-2-v1:test"
    if dataset == "paper-tasks":
        from miprun.evaluation.task_text import RENDER, paper_tasks_text

        return paper_tasks_text(), "local task sets: " + ", ".join(RENDER)
    if dataset == "c4":
        for name in ("c4-validation.00000-of-00008.json", "c4-validation.00000-of-00008.json.gz", "validation.jsonl"):
            found = local_file("c4", name)
            if found:
                return read_jsonl(found, max_rows=1100), str(found)
        shard = "en/c4-validation.00000-of-00008.json.gz"
        text = hf_text("allenai/c4", None, "validation", "text", max_rows=1100, data_files={"validation": shard})
        return text, f"hf:allenai/c4:{shard}"
    # ptb
    found = local_file("ptb", "ptb.test.txt")
    if found:
        return found.read_text(encoding="utf-8"), str(found)
    # The loading script of ptb_text_only no longer runs on datasets >= 4; its parquet export does.
    text = hf_text(
        "ptb-text-only/ptb_text_only", "penn_treebank", "test", "sentence", joiner=" ",
        attempts=[{"revision": "refs/convert/parquet"}],
    )
    return text, "hf:ptb-text-only/ptb_text_only/penn_treebank:test"


# ------------------------------------------------------------------------------------ windows


def default_seq_len(model: Any) -> int:
    """``min(2048, model context)``."""
    context = context_length(model)
    return min(DEFAULT_SEQ_LEN, context) if context else DEFAULT_SEQ_LEN


def prefix_token_id(tokenizer: Any) -> int | None:
    """The token prepended to every window: BOS, else EOS (as lm-eval), else None."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None


def make_windows(ids: list[int], seq_len: int, prefix: int | None) -> list[tuple[list[int], int]]:
    """Cut ``ids`` into non-overlapping windows of at most ``seq_len`` tokens.

    Returns ``(window, first_scored)`` pairs: the loss is taken on positions ``first_scored..end``
    of each window. With a ``prefix`` token, each window is ``[prefix] + chunk`` (chunk of
    ``seq_len - 1`` text tokens) and all chunk tokens are scored; without, each window is a
    ``seq_len`` chunk whose first token is context only. A final window that would score nothing
    is dropped.
    """
    if seq_len < 2:
        raise MiprunError(f"--seq-len must be at least 2, got {seq_len}")
    windows = []
    if prefix is not None:
        step = seq_len - 1
        for start in range(0, len(ids), step):
            windows.append(([prefix] + ids[start : start + step], 1))
    else:
        for start in range(0, len(ids), seq_len):
            chunk = ids[start : start + seq_len]
            if len(chunk) >= 2:
                windows.append((chunk, 1))
    return windows


class _Progress:
    """Progress over windows on stderr: a rich bar on a terminal, a line per ~10 % otherwise."""

    def __init__(self, enabled: bool | None, label: str, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.label, self.total, self.done = label, total, 0
        self.start = time.perf_counter()
        self.bar = None
        self.every = max(1, total // 10)

    def __enter__(self) -> "_Progress":
        if self.enabled and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total)
        return self

    def advance(self, count: int) -> None:
        """Record ``count`` more windows done."""
        before, self.done = self.done, self.done + count
        if self.bar is not None:
            self.bar.advance(self.task, count)
        elif self.enabled and (self.done // self.every > before // self.every or self.done == self.total):
            elapsed = time.perf_counter() - self.start
            self.console.print(f"{self.label}: {self.done}/{self.total} windows, {elapsed:.0f} s", highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def nll_of_windows(model: Any, windows: list[tuple[list[int], int]], *, batch_size: int = 1, progress: bool | None = None, label: str = "perplexity") -> tuple[float, int]:
    """Sum of per-token NLL (float64) and the number of scored tokens over ``windows``.

    Windows of equal length are batched ``batch_size`` at a time; logits are cast to float32
    before ``log_softmax``.
    """
    import torch

    device = input_device(model)
    total, count = 0.0, 0
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and len(windows[batches[-1][0]][0]) == len(windows[i][0]):
            batches[-1].append(i)
        else:
            batches.append([i])
    all_ids = [torch.tensor([windows[i][0] for i in batch], dtype=torch.long, device=device) for batch in batches]
    loader = layerwise_loader(model)
    with _Progress(progress, label, len(windows)) as bar, torch.inference_mode():
        # a layer-wise model runs block-major: each block read once for many batches
        outputs = (model(input_ids=ids, use_cache=False).logits for ids in all_ids) if loader is None else \
            sweep_logits(loader, all_ids)
        for batch, input_ids, logits in zip(batches, all_ids, outputs):
            for row, i in enumerate(batch):
                first = windows[i][1]
                # position t predicts token t+1; score targets first..end
                log_probs = torch.log_softmax(logits[row, first - 1 : -1].float(), dim=-1)
                targets = input_ids[row, first:]
                nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                total += float(nll.double().sum())
                count += int(targets.numel())
            del logits
            bar.advance(len(batch))
    return total, count


def perplexity(
    model: Any,
    tokenizer: Any,
    dataset: str = "wikitext2",
    *,
    seq_len: int | None = None,
    batch_size: int = 1,
    add_bos: bool = True,
    max_windows: int | None = None,
    text: str | None = None,
    progress: bool | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``dataset`` under miprun's protocol (module docstring).

    :param seq_len: window length in tokens, prefix included (default ``min(2048, context)``).
    :param add_bos: prepend the prefix token (BOS, else EOS) to every window.
    :param max_windows: evaluate only the first N windows (quick runs; the result says so).
    :param text: evaluate this text instead of loading ``dataset`` (``dataset`` is then a label).
    :param progress: progress on stderr, a rich bar on a terminal, lines otherwise (None: only
        when stderr is a terminal).
    """
    start = time.perf_counter()
    if text is None:
        text, source = load_text(dataset)
    else:
        source = "text"
    seq_len = seq_len or default_seq_len(model)
    context = context_length(model)
    if context and seq_len > context:
        raise MiprunError(f"--seq-len {seq_len} exceeds the model's context of {context} tokens")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise MiprunError(f"perplexity data '{dataset}' is empty")
    from miprun.models.devices import check_token_ids

    check_token_ids(ids, model, f"perplexity data '{dataset}'")
    prefix = prefix_token_id(tokenizer) if add_bos else None
    all_windows = make_windows(ids, seq_len, prefix)
    windows = all_windows if max_windows is None else all_windows[:max_windows]
    nll_sum, tokens = nll_of_windows(model, windows, batch_size=batch_size, progress=progress, label=f"ppl {dataset}")
    mean = nll_sum / tokens
    # Word-level perplexity (lm-eval's unit): total NLL over whitespace-separated words of the
    # whole text; only defined when every window was scored.
    words = len(re.split(r"\s+", text)) if len(windows) == len(all_windows) else None
    return PerplexityResult(
        dataset=dataset,
        source=source,
        seq_len=seq_len,
        add_bos=prefix is not None,
        windows=len(windows),
        total_windows=len(all_windows),
        tokens=tokens,
        nll_sum=nll_sum,
        mean_nll=mean,
        perplexity=math.exp(mean),
        words=words,
        word_perplexity=math.exp(nll_sum / words) if words else None,
        seconds=round(time.perf_counter() - start, 3),
    )
