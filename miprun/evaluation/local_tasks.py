"""Readers that turn the offline copies in the data directory into lm-eval documents.

Each reader returns documents in the *schema of the Hugging Face data set that lm-eval's own task
reads* (``allenai/ai2_arc``, ``nyu-mll/glue``, ``aps/super_glue``, ``baber/piqa``,
``allenai/winogrande``, ``EleutherAI/wikitext_document_level``), so the task configurations in
``miprun/evaluation/tasks/`` can use the same prompts, choices and targets as lm-eval's.

Label conventions (the upstream integer labels lm-eval scores against):

========== ===================================== ======================================
task       local file                            gold label
========== ===================================== ======================================
arc_*      ``answerKey`` letter or digit          index of the key in ``choices.label``
piqa       ``valid-labels.lst`` (0/1)             0 → sol1, 1 → sol2
winogrande ``answer`` "1"/"2"                     kept as the string, as in the HF set
wsc        ``label`` "true"/"false"               1 = true, 0 = false (SuperGLUE)
wnli       ``label`` 0/1                          1 = entailment, 0 = not (GLUE)
sst2       ``label`` 0/1                          1 = positive, 0 = negative (GLUE)
rte        ``label`` entailment/not_entailment    0 = entailment, 1 = not_entailment (GLUE)
qnli       ``label`` entailment/not_entailment    0 = entailment, 1 = not_entailment (GLUE)
cb         ``label`` entailment/contradiction/…   0 = entailment, 1 = contradiction, 2 = neutral
========== ===================================== ======================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miprun.data.datadir import data_dir, local_file
from miprun.errors import MiprunError

Doc = dict[str, Any]

GLUE_ENTAILMENT = {"entailment": 0, "not_entailment": 1}
"""GLUE RTE / QNLI label ids."""
CB_LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}
"""SuperGLUE CB label ids."""
WSC_LABELS = {"false": 0, "true": 1}
"""SuperGLUE WSC label ids."""


def _jsonl(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _tsv(path: Path) -> list[dict[str, str]]:
    """GLUE .tsv files: a header, tab-separated, no quoting (quotes are literal text)."""
    with path.open(encoding="utf-8") as handle:
        lines = [line.rstrip("\n").rstrip("\r") for line in handle if line.strip()]
    header = lines[0].split("\t")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise MiprunError(f"{path}:{number}: expected {len(header)} tab-separated fields, found {len(fields)}")
        rows.append(dict(zip(header, fields)))
    return rows


def _arc(files: dict[str, Path]) -> Doc:
    out = {}
    for split, path in files.items():
        docs = []
        for row in _jsonl(path):
            choices = row["question"]["choices"]
            docs.append(
                {
                    "id": row["id"],
                    "question": row["question"]["stem"],
                    "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                    "answerKey": row["answerKey"],
                }
            )
        out[split] = docs
    return out


def _piqa(files: dict[str, Path]) -> Doc:
    path = files["validation"]
    docs = _jsonl(path)
    labels_path = path.with_name(path.name.replace(".jsonl", "-labels.lst"))
    labels = [int(line) for line in labels_path.read_text(encoding="utf-8").split()]
    if len(labels) != len(docs):
        raise MiprunError(f"{labels_path} has {len(labels)} labels for {len(docs)} examples in {path}")
    return {"validation": [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": y} for d, y in zip(docs, labels)]}


def _winogrande(files: dict[str, Path]) -> Doc:
    docs = _jsonl(files["validation"])
    return {"validation": [{k: d[k] for k in ("sentence", "option1", "option2", "answer")} for d in docs]}


def _wsc(files: dict[str, Path]) -> Doc:
    docs = []
    for d in _jsonl(files["validation"]):
        target = d["target"]
        docs.append(
            {
                "text": d["text"],
                "span1_index": target["span1_index"],
                "span2_index": target["span2_index"],
                "span1_text": target["span1_text"],
                "span2_text": target["span2_text"],
                "idx": d["idx"],
                "label": WSC_LABELS[str(d["label"]).lower()],
            }
        )
    return {"validation": docs}


def _label(value: str, mapping: dict[str, int] | None) -> int:
    return mapping[value] if mapping is not None else int(value)


def _glue_pair(first: str, second: str, local_first: str, local_second: str, mapping: dict[str, int] | None):
    def read(files: dict[str, Path]) -> Doc:
        path = files["validation"]
        rows = _jsonl(path) if path.suffix == ".jsonl" else _tsv(path)
        docs = [
            {
                first: row[local_first],
                second: row[local_second],
                "label": _label(str(row["label"]), mapping),
                "idx": int(row.get("idx", row.get("index", i))),
            }
            for i, row in enumerate(rows)
        ]
        return {"validation": docs}

    return read


def _sst2(files: dict[str, Path]) -> Doc:
    rows = _tsv(files["validation"])
    return {"validation": [{"sentence": r["sentence"], "label": int(r["label"]), "idx": i} for i, r in enumerate(rows)]}


def _wikitext(files: dict[str, Path]) -> Doc:
    return {"test": [{"page": d["page"]} for d in _jsonl(files["test"])]}


@dataclass(frozen=True)
class LocalTask:
    """Where a task's local copy lives (paths relative to the data directory) and how it is read."""

    files: dict[str, str]
    reader: Callable[[dict[str, Path]], dict[str, list[Doc]]]
    split: str
    """The split lm-eval evaluates (its ``test_split``, else ``validation_split``)."""
    size: int
    """Documented number of examples in that split."""


LOCAL_TASKS: dict[str, LocalTask] = {
    "arc_easy": LocalTask(
        {"test": "arc_easy/ARC-Easy-Test.jsonl", "validation": "arc_easy/ARC-Easy-Dev.jsonl"}, _arc, "test", 2376
    ),
    "arc_challenge": LocalTask(
        {"test": "arc_challenge/ARC-Challenge-Test.jsonl", "validation": "arc_challenge/ARC-Challenge-Dev.jsonl"},
        _arc,
        "test",
        1172,
    ),
    "piqa": LocalTask({"validation": "piqa/valid.jsonl"}, _piqa, "validation", 1838),
    "winogrande": LocalTask({"validation": "winogrande/dev.jsonl"}, _winogrande, "validation", 1267),
    "wsc": LocalTask({"validation": "wsc/val.jsonl"}, _wsc, "validation", 104),
    "wnli": LocalTask(
        {"validation": "wnli/dev.tsv"}, _glue_pair("sentence1", "sentence2", "sentence1", "sentence2", None), "validation", 71
    ),
    "sst2": LocalTask({"validation": "sst2/dev.tsv"}, _sst2, "validation", 872),
    "rte": LocalTask(
        {"validation": "rte/val.jsonl"},
        _glue_pair("sentence1", "sentence2", "premise", "hypothesis", GLUE_ENTAILMENT),
        "validation",
        277,
    ),
    "qnli": LocalTask(
        {"validation": "qnli/dev.tsv"},
        _glue_pair("question", "sentence", "question", "sentence", GLUE_ENTAILMENT),
        "validation",
        5463,
    ),
    "cb": LocalTask(
        {"validation": "cb/val.jsonl"}, _glue_pair("premise", "hypothesis", "premise", "hypothesis", CB_LABELS), "validation", 56
    ),
    "wikitext": LocalTask(
        {"test": "wikitext-2-raw/wikitext_document_level_test.jsonl"}, _wikitext, "test", 62
    ),
}
"""Tasks with an offline configuration, by lm-eval task name."""


def local_files(name: str) -> dict[str, Path] | None:
    """The local files of task ``name`` by split, or None when any of them is missing."""
    task = LOCAL_TASKS[name]
    found = {split: local_file(*rel.split("/")) for split, rel in task.files.items()}
    if any(path is None for path in found.values()):
        return None
    return found  # type: ignore[return-value]


def local_available(name: str) -> bool:
    """Whether task ``name`` has an offline configuration and its files are in the data directory."""
    return name in LOCAL_TASKS and local_files(name) is not None


def read_local_docs(name: str) -> dict[str, list[Doc]]:
    """The documents of task ``name`` by split, read from the data directory (plain Python lists)."""
    if name not in LOCAL_TASKS:
        raise MiprunError(f"no offline configuration for task '{name}'; offline tasks: {', '.join(LOCAL_TASKS)}")
    files = local_files(name)
    if files is None:
        where = data_dir() or "no data directory (set MIPRUN_DATA_DIR)"
        raise MiprunError(f"the local files of task '{name}' ({', '.join(LOCAL_TASKS[name].files.values())}) are not in {where}")
    return LOCAL_TASKS[name].reader(files)


def load_local_dataset(name: str, **_ignored: Any):
    """``datasets.DatasetDict`` of task ``name`` (the ``custom_dataset`` hook of the task YAMLs)."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs) for split, docs in read_local_docs(name).items()})
