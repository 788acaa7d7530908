"""Reading local text: plain files, JSON lines (gzipped or not), clear errors."""

import gzip
import json

import pytest

from miprun.data.text import is_jsonl, read_jsonl, read_text_file
from miprun.errors import MiprunError


def test_jsonl_fields_strings_and_row_limit(tmp_path):
    rows = [{"text": "first"}, "second", {"id": 3, "sentence": "third"}, {"id": 4, "note": "fourth"}]
    path = tmp_path / "c4-validation.00000-of-00008.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert is_jsonl(path) and not is_jsonl(tmp_path / "wiki.test.raw")
    assert read_text_file(path) == "first\n\nsecond\n\nthird\n\nfourth"
    assert read_jsonl(path, max_rows=2) == "first\n\nsecond"


def test_bad_lines_and_missing_files_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(MiprunError, match=r"bad.jsonl:2 is not valid JSON"):
        read_text_file(bad)
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"n": 1}\n')
    with pytest.raises(MiprunError, match="numbers.jsonl:1: the line has no text field"):
        read_text_file(numbers)
    with pytest.raises(MiprunError, match="calibration file .*missing.txt' does not exist"):
        read_text_file(tmp_path / "missing.txt", what="calibration file")


def test_chat_instruction_and_array_files_give_all_their_text(tmp_path):
    """Conversations (OpenAI messages with text parts, ShareGPT), Alpaca's instruction fields, and a
    .json file holding one array (alpaca_data.json) are read whole, not refused or cut to one field."""
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": [{"type": "text", "text": "hello"}, {"type": "image"}]}]},
        {"conversations": [{"from": "human", "value": "why"}, {"from": "gpt", "value": "because"}]},
        {"instruction": "add", "input": "", "output": "4", "id": "a1"},
    ]
    lines = tmp_path / "chat.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    expected = "be brief\n\nhi\n\nhello\n\nwhy\n\nbecause\n\nadd\n\n4"
    assert read_text_file(lines) == expected
    array = tmp_path / "alpaca_data.json"
    array.write_text(json.dumps(rows, indent=2))
    assert read_text_file(array) == expected and read_jsonl(array, max_rows=1) == "be brief\n\nhi\n\nhello"
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "a"},\n')
    with pytest.raises(MiprunError, match=r"broken.json is not valid JSON"):
        read_text_file(broken)


def test_tables_are_read_row_by_row_like_json_objects(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "data.csv"
    table.write_text('id,text\n1,"first, with a comma"\n2,second\n')
    assert read_text_file(table) == "first, with a comma\n\nsecond"
    tab = tmp_path / "pairs.tsv"
    tab.write_text("prompt\tresponse\nwhy\tbecause\n")
    assert read_text_file(tab) == "why\n\nbecause"
    parquet = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}]}]), parquet)
    assert read_text_file(parquet) == "hi\n\nhello"
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(MiprunError, match="cannot read .*fake.parquet' as Parquet"):
        read_text_file(fake)


def test_conversations_are_rendered_with_the_models_chat_template(tmp_path, text_file):
    """Where the tokenizer has a chat template, OpenAI-style conversations are calibrated on as the
    model reads them; a conversation the template refuses, and ShareGPT turns, as their texts."""
    from conftest import WORDS, build_tokenizer

    from miprun.data.calibration import load_calibration
    from miprun.data.chat import ChatTemplate

    tokenizer = build_tokenizer()
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
                               "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    words = " ".join(WORDS[:6])
    rows = [{"messages": [{"role": "user", "content": words}, {"role": "assistant", "content": words}]},
            {"messages": [{"role": "system", "content": "rules"}, {"role": "user", "content": "hi"}]},
            {"conversations": [{"from": "human", "value": "why"}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    chat = ChatTemplate(tokenizer)
    assert read_text_file(path, chat=chat) == f"[user] {words}\n[assistant] {words}\n\n\nrules\n\nhi\n\nwhy"
    assert chat.record() == {"rendered": 1, "not_rendered": 1}
    assert read_text_file(path) == f"{words}\n\n{words}\n\nrules\n\nhi\n\nwhy"  # no template: the texts
    calibration = load_calibration(str(path), tokenizer, num_samples=2, seq_len=4, seed=0)
    assert calibration.source["chat_template"] == {"rendered": 1, "not_rendered": 1}
    plain = load_calibration(str(text_file), tokenizer, num_samples=2, seq_len=4, seed=0)
    assert "chat_template" not in plain.source


def test_rows_of_unknown_fields_give_their_sentences_not_their_ids_or_labels(tmp_path):
    """A task's dev file passed as calibration (ARC's nested question and choices, PIQA's goal and
    solutions, an NLI pair with its label): the text is every sentence in the row, nested ones
    included, in order — not the id its first field holds, nor the one-word label."""
    arc = {"id": "Mercury_7057260", "question": {"stem": "Which gas do plants take in?",
                                                 "choices": [{"text": "carbon dioxide", "label": "A"},
                                                             {"text": "helium", "label": "B"}]}, "answerKey": "A"}
    piqa = {"goal": "How do I open a jar?", "sol1": "Twist the lid to the left.", "sol2": "Hit it with a hammer."}
    nli = {"idx": 7, "premise": "The cat sat on the mat.", "hypothesis": "A cat sat.", "label": "entailment"}
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in (arc, piqa, nli)))
    assert read_text_file(path) == ("Which gas do plants take in?\n\ncarbon dioxide\n\n"
                                    "How do I open a jar?\n\nTwist the lid to the left.\n\nHit it with a hammer.\n\n"
                                    "The cat sat on the mat.\n\nA cat sat.")
