"""Functions referenced (``!function utils.…``) by miprun's offline lm-eval task configurations.

lm-eval imports this file by path, next to the YAML files. The prompt and scoring logic follows
lm-eval's own tasks of the same names, so scores are comparable with theirs.
"""

from __future__ import annotations

import re
from typing import Any

from lm_eval.utils import general_detokenize

from miprun.evaluation.local_tasks import load_local_dataset


def load_dataset(miprun_task: str, **_ignored: Any):
    """``custom_dataset`` hook: the task's local files as a ``datasets.DatasetDict``."""
    return load_local_dataset(miprun_task)


# --- Winogrande: partial scoring. The two contexts end with each option; the shared continuation
# is the text after the blank; the gold "text" is the index of the right context.


def winogrande_doc_to_text(doc: dict) -> int:
    """Index of the correct option (lm-eval's multiple-input convention for the gold answer)."""
    return {"1": 0, "2": 1}[str(doc["answer"])]


def winogrande_doc_to_target(doc: dict) -> str:
    """The part of the sentence after the blank, scored after each context."""
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1 :].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    """The sentence up to the blank, completed by option 1 and by option 2."""
    prefix = doc["sentence"][: doc["sentence"].index("_")]
    return [prefix + doc["option1"], prefix + doc["option2"]]


# --- SuperGLUE WSC (wsc.fixed): mark the pronoun in the passage and ask whether it refers to the noun.


def wsc_doc_to_text(doc: dict) -> str:
    """Passage with the pronoun in asterisks, then the yes/no question about its referent."""
    words_before = " ".join(doc["text"].split()[: doc["span2_index"]])
    rest = doc["text"][len(words_before) + len(doc["span2_text"]) + 1 :]
    passage = general_detokenize(f"{words_before} *{doc['span2_text']}*{rest}")
    question = f'In the passage above, does the pronoun "*{doc["span2_text"]}*" refer to "*{doc["span1_text"]}*"?'
    return f"Passage: {passage}\nQuestion: {question}\nAnswer:"


# --- CB: macro F1 over the three classes (no scikit-learn needed).


def cb_macro_f1(items: list[tuple[int, int]]) -> float:
    """Mean over classes 0, 1, 2 of the one-vs-rest F1 of (prediction, gold) pairs; 0 when undefined."""
    scores = []
    for cls in (0, 1, 2):
        tp = sum(1 for p, g in items if p == cls and g == cls)
        fp = sum(1 for p, g in items if p == cls and g != cls)
        fn = sum(1 for p, g in items if p != cls and g == cls)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


# --- WikiText (document level): lm-eval's detokenizer and word/byte counts on the original page.

_PAIRS = [
    ("s '", "s'"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
]
_BRACKETS = [
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    (r"{\s*([^}]*?)\s*}", r"{\1}"),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    (r"'\s*([^']*?)\s*'", r"'\1'"),
]
_TAIL = [
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
]


def wikitext_detokenize(doc: dict) -> str:
    """Undo WikiText's tokenization of a page (the text lm-eval scores)."""
    text = doc["page"]
    text = text.replace(*_PAIRS[0])
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for old, new in _PAIRS[1:]:
        text = text.replace(old, new)
    for pattern, repl in _BRACKETS:
        text = re.sub(pattern, repl, text)
    for old, new in _TAIL:
        text = text.replace(old, new)
    return text


def wikitext_process_results(doc: dict, results: list[float]) -> dict:
    """Rolling log-likelihood of a page with its word and byte counts, counted on the original page."""
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["page"]))
    size = len(doc["page"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, size),
        "bits_per_byte": (loglikelihood, size),
    }
