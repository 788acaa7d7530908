"""The paper's ten tasks as running text: a perplexity corpus of other domains than WikiText-2.

Every example of the ten task sets is written as the plain text it describes — a science question
with its correct answer (ARC), a goal with its correct solution (PIQA), a sentence with the blank
filled by the right option (WinoGrande), a movie review (SST-2), a premise with its hypothesis (RTE,
CB, WNLI), a question with a sentence (QNLI), a Winograd passage (WSC) — and the examples of the ten
sets are interleaved one by one, so that any prefix of the corpus (``--max-windows``) samples every
domain. Read from the local data directory (``MIPRUN_DATA_DIR``), like the offline tasks. ARC uses
its development split (its test split is what ``--tasks`` scores); the others have only the split
``--tasks`` scores, so a run that reports both measures one text twice in two ways (likelihood of
the text, accuracy of the choice).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import zip_longest
from typing import Any

from miprun.evaluation.local_tasks import read_local_docs


def _arc(doc: dict[str, Any]) -> str:
    choices = doc["choices"]
    answer = choices["text"][choices["label"].index(doc["answerKey"])] if doc["answerKey"] in choices["label"] else ""
    return f"{doc['question']} {answer}".strip()


def _winogrande(doc: dict[str, Any]) -> str:
    return doc["sentence"].replace("_", doc["option1"] if doc["answer"] == "1" else doc["option2"])


RENDER: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "arc_easy": ("validation", _arc),
    "arc_challenge": ("validation", _arc),
    "piqa": ("validation", lambda d: f"{d['goal']} {d['sol2'] if d['label'] == 1 else d['sol1']}"),
    "winogrande": ("validation", _winogrande),
    "wsc": ("validation", lambda d: d["text"]),
    "wnli": ("validation", lambda d: f"{d['sentence1']} {d['sentence2']}"),
    "sst2": ("validation", lambda d: d["sentence"]),
    "rte": ("validation", lambda d: f"{d['sentence1']} {d['sentence2']}"),
    "qnli": ("validation", lambda d: f"{d['question']} {d['sentence']}"),
    "cb": ("validation", lambda d: f"{d['premise']} {d['hypothesis']}"),
}
"""Task → (split used, how one example reads as text)."""


def paper_tasks_text() -> str:
    """The ten task sets as one text: examples interleaved across tasks, one paragraph each."""
    streams = []
    for task, (split, render) in RENDER.items():
        streams.append([render(doc).strip() for doc in read_local_docs(task)[split]])
    paragraphs = [p for group in zip_longest(*streams) for p in group if p]
    return "\n\n".join(paragraphs) + "\n"
