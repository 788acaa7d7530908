"""miprun's offline lm-eval task configurations: every example is read, labels map as in lm-eval.

No model runs here: the tests build lm-eval Task objects and look at their documents, prompts,
choices and gold answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from miprun.data.datadir import local_file
from miprun.evaluation.lm_eval_bridge import (
    PAPER_TASKS,
    TASKS_DIR,
    build_tasks,
    local_task_manager,
    parse_tasks,
)
from miprun.evaluation.local_tasks import LOCAL_TASKS, local_available, read_local_docs

pytestmark = pytest.mark.skipif(
    not all(local_available(name) for name in LOCAL_TASKS), reason="the shared data directory is not here"
)

ALL = list(PAPER_TASKS) + ["wikitext"]


@pytest.fixture(scope="module")
def tasks():
    return local_task_manager().load(ALL)["tasks"]


def _data_lines(relative: str) -> int:
    path = local_file(*relative.split("/"))
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return len(lines) - (1 if path.suffix == ".tsv" else 0)  # GLUE .tsv files have a header


def gold_choice(task, doc) -> str:
    """The text of the gold answer, the way lm-eval's multiple-choice scoring picks it."""
    choices = task.doc_to_choice(doc)
    if task.multiple_input:  # winogrande: the gold is a context index, given by doc_to_text
        return choices[task.doc_to_text(doc)]
    target = task.doc_to_target(doc)
    return choices[target] if isinstance(target, int) else target


@pytest.mark.parametrize("name", ALL)
def test_every_example_is_read(tasks, name):
    spec = LOCAL_TASKS[name]
    task = tasks[name]
    docs = task.eval_docs
    assert len(docs) == spec.size == _data_lines(spec.files[spec.split])
    assert (task.has_test_docs() and spec.split == "test") or (not task.has_test_docs() and spec.split == "validation")


def test_the_paper_tasks_are_named_like_lm_eval():
    assert parse_tasks("paper") == list(PAPER_TASKS)
    assert parse_tasks("piqa, paper") == ["piqa"] + [t for t in PAPER_TASKS if t != "piqa"]
    assert set(local_task_manager().all_subtasks) == set(LOCAL_TASKS)
    assert sorted(p.stem for p in Path(TASKS_DIR).glob("*.yaml")) == sorted(LOCAL_TASKS)


# Gold answers checked by hand against the files (document index in the evaluated split,
# the gold answer's text). Comments give the reason the answer is right.
HAND_CHECKED = {
    "arc_easy": [
        (0, "Sunlight is the source of energy for nearly all ecosystems."),  # answerKey A
        (14, "elements"),  # numeric labels 1-4, answerKey "2"
    ],
    "arc_challenge": [(0, "Planetary days will become shorter."), (836, "Warm-blooded animals normally maintain a fairly constant internal temperature at all air temperatures.")],
    "piqa": [
        (0, "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish."),  # label 0
        (2, "You have to defeat Apollo Creed and Clubber Lang first."),  # label 1
    ],
    "winogrande": [
        (0, "Sarah was a much better surgeon than Maria so Maria"),  # the worse surgeon got the easier cases (answer 2)
        (1, "Sarah was a much better surgeon than Maria so Sarah"),  # answer 1
        (3, "Terry tried to bake the eggplant in the toaster oven but the eggplant"),  # too big (answer 1)
    ],
    "wsc": [(0, "no"), (1, "yes"), (2, "no")],  # him≠anyone; his=Mr. Moncrieff; they≠lemon trees
    "wnli": [(0, "False"), (1, "True"), (2, "False")],  # it=drain; she=Susan; she=Beth
    "sst2": [(0, "positive"), (1, "negative")],  # "charming"; "bleak and desperate"
    "rte": [(0, "False"), (1, "True")],  # lung cancer is no accident; bacteria are winning
    "qnli": [(0, "yes"), (1, "no"), (2, "no")],  # entailment, not_entailment, not_entailment
    "cb": [(0, "False"), (1, "Neither"), (2, "True")],  # contradiction, neutral, entailment
}


@pytest.mark.parametrize("name", list(HAND_CHECKED))
def test_hand_checked_gold_answers(tasks, name):
    task = tasks[name]
    docs = task.eval_docs
    for index, expected in HAND_CHECKED[name]:
        assert gold_choice(task, docs[index]) == expected, (name, index)


def test_prompts_match_lm_eval_formats(tasks):
    doc = tasks["wsc"].eval_docs[0]
    assert tasks["wsc"].doc_to_text(doc) == (
        "Passage: Bernard, who had not told the government official that he was less than 21 when he filed for a "
        "homestead claim, did not consider that he had done anything dishonest. Still, anyone who knew that he was "
        '19 years old could take his claim away from *him*.\nQuestion: In the passage above, does the pronoun '
        '"*him*" refer to "*anyone*"?\nAnswer:'
    )
    doc = tasks["rte"].eval_docs[1]
    assert tasks["rte"].doc_to_text(doc).endswith("\nQuestion: Bacteria is winning the war against antibiotics. True or False?\nAnswer:")
    doc = tasks["winogrande"].eval_docs[0]
    assert tasks["winogrande"].doc_to_target(doc) == "always got the easier cases."


def test_labels_follow_upstream_ids():
    """Integer labels in the documents use the upstream data sets' ids, which lm-eval's choices index."""
    assert [d["label"] for d in read_local_docs("rte")["validation"][:2]] == [1, 0]  # not_entailment, entailment
    assert [d["label"] for d in read_local_docs("cb")["validation"][:3]] == [1, 2, 0]
    assert [d["label"] for d in read_local_docs("wsc")["validation"][:3]] == [0, 1, 0]
    assert [d["label"] for d in read_local_docs("qnli")["validation"][:2]] == [0, 1]


# --- equivalence with lm-eval's own task definitions -----------------------------------------

UPSTREAM = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "wsc": "super_glue/wsc/default.yaml",
    "wnli": "glue/wnli/default.yaml",
    "sst2": "glue/sst2/default.yaml",
    "rte": "glue/rte/default.yaml",
    "qnli": "glue/qnli/default.yaml",
    "cb": "super_glue/cb/default.yaml",
    "wikitext": "wikitext/wikitext.yaml",
}


def upstream_task(name: str):
    """lm-eval's own configuration of ``name``, fed miprun's local documents instead of the hub."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from miprun.evaluation.local_tasks import load_local_dataset

    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / UPSTREAM[name])
    for key in ("tag", "dataset_path", "dataset_name", "training_split"):
        cfg.pop(key, None)
    if LOCAL_TASKS[name].split == "validation":
        cfg.pop("test_split", None)
    else:
        cfg.pop("validation_split", None)
    cfg["custom_dataset"] = lambda **_: load_local_dataset(name)
    return TaskManager(include_defaults=False).load([cfg])["tasks"][name]


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_same_prompts_choices_and_golds_as_lm_eval(tasks, name):
    ours, theirs = tasks[name], upstream_task(name)
    assert ours.OUTPUT_TYPE == theirs.OUTPUT_TYPE
    assert set(theirs._metric_fn_list) <= set(ours._metric_fn_list)
    ours_docs, their_docs = ours.eval_docs, theirs.eval_docs
    assert len(ours_docs) == len(their_docs)
    for i in range(len(ours_docs)):
        a, b = ours_docs[i], their_docs[i]
        assert ours.doc_to_text(a) == theirs.doc_to_text(b), (name, i)
        assert ours.doc_to_target(a) == theirs.doc_to_target(b), (name, i)
        if ours.OUTPUT_TYPE == "multiple_choice":
            assert ours.doc_to_choice(a) == theirs.doc_to_choice(b), (name, i)


def test_cb_macro_f1_by_hand():
    import importlib.util

    spec = importlib.util.spec_from_file_location("miprun_task_utils", TASKS_DIR / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    # class 0: tp=1 fp=1 fn=0 -> 2/3; class 1: tp=1 fp=0 fn=1 -> 2/3; class 2: tp=0 -> 0
    items = [(0, 0), (0, 1), (1, 1)]  # (prediction, gold)
    assert utils.cb_macro_f1(items) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_unknown_task_name_is_a_one_line_error(monkeypatch):
    from miprun.errors import MiprunError
    from miprun.evaluation import lm_eval_bridge

    with pytest.raises(MiprunError, match="no local data"):
        build_tasks(["hellaswag"], offline_only=True)

    class FakeManager:
        all_tasks = ["hellaswag"]
        all_subtasks = ["hellaswag"]

    monkeypatch.setattr(lm_eval_bridge, "standard_task_manager", lambda: FakeManager())
    with pytest.raises(MiprunError, match="did you mean 'hellaswag'"):
        build_tasks(["hellaswg"])


def test_missing_local_files_fall_back_to_lm_eval(monkeypatch, tmp_path):
    from miprun.evaluation.lm_eval_bridge import task_sources

    assert task_sources(["piqa"])["piqa"].startswith("local:")
    monkeypatch.setenv("MIPRUN_DATA_DIR", str(tmp_path))
    assert not local_available("piqa")
    assert task_sources(["piqa"]) == {"piqa": "lm-eval"}
