"""miprun's perplexity protocol on a tiny model, checked against a hand computation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_eval_helpers import CORPUS, tiny_model, tiny_tokenizer

from miprun.errors import MiprunError
from miprun.evaluation.perplexity import (
    default_seq_len,
    load_text,
    make_windows,
    perplexity,
    prefix_token_id,
)

TEXT = " ".join(CORPUS * 3)


def hand_nll(model, windows: list[list[int]]) -> tuple[float, int]:
    """Sum of -log p(token | window prefix) of every token after the first of each window, one
    window and one position at a time, in float64."""
    total, count = 0.0, 0
    for window in windows:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([window])).logits[0].double()
        for t in range(1, len(window)):
            total -= torch.log_softmax(logits[t - 1], dim=-1)[window[t]].item()
            count += 1
    return total, count


def test_windows_cover_every_token_once_with_bos():
    ids = list(range(10, 33))  # 23 tokens
    windows = make_windows(ids, seq_len=8, prefix=1)
    assert [w for w, _ in windows][0] == [1, *range(10, 17)]
    assert [len(w) for w, _ in windows] == [8, 8, 8, 3]  # BOS + 7, 7, 7 and 2 text tokens
    scored = [tok for w, first in windows for tok in w[first:]]
    assert scored == ids


def test_windows_without_bos_are_plain_chunks():
    ids = list(range(10, 33))
    windows = make_windows(ids, seq_len=8, prefix=None)
    assert [len(w) for w, _ in windows] == [8, 8, 7]
    assert windows[0][0] == list(range(10, 18))
    # a trailing chunk of a single token would score nothing and is dropped
    assert len(make_windows(list(range(17)), seq_len=8, prefix=None)) == 2


@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_equals_hand_computation(batch_size):
    model, tok = tiny_model(), tiny_tokenizer()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    seq_len = 37
    result = perplexity(model, tok, "inline", text=TEXT, seq_len=seq_len, batch_size=batch_size, progress=False)

    bos = tok.bos_token_id
    windows = [[bos] + ids[i : i + seq_len - 1] for i in range(0, len(ids), seq_len - 1)]
    total, count = hand_nll(model, windows)
    assert len(ids) % (seq_len - 1) != 0, "the text should leave a partial last window"
    assert result.windows == len(windows) == result.total_windows
    assert result.tokens == count == len(ids)
    assert result.nll_sum == pytest.approx(total, rel=1e-5)
    assert result.mean_nll == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result.add_bos is True
    assert result.words == len(TEXT.split()) + (1 if TEXT[0].isspace() or TEXT[-1].isspace() else 0)
    assert result.word_perplexity == pytest.approx(math.exp(total / result.words), rel=1e-5)


def test_perplexity_without_bos_matches_hand_computation():
    model, tok = tiny_model(), tiny_tokenizer()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    result = perplexity(model, tok, "inline", text=TEXT, seq_len=40, add_bos=False, progress=False)
    windows = [ids[i : i + 40] for i in range(0, len(ids), 40)]
    windows = [w for w in windows if len(w) >= 2]
    total, count = hand_nll(model, windows)
    assert result.tokens == count == len(ids) - len(windows)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result.add_bos is False


def test_max_windows_is_reported_and_result_is_json():
    model, tok = tiny_model(), tiny_tokenizer()
    result = perplexity(model, tok, "inline", text=TEXT, seq_len=32, max_windows=2, progress=False)
    assert result.windows == 2 and result.total_windows > 2
    assert result.word_perplexity is None  # only defined over the whole text
    json.dumps(result.to_dict(), allow_nan=False)


def test_default_seq_len_is_min_of_2048_and_context():
    assert default_seq_len(tiny_model(context=512)) == 512
    assert default_seq_len(tiny_model(context=4096)) == 2048


def test_seq_len_beyond_context_is_an_error():
    with pytest.raises(MiprunError, match="exceeds the model's context"):
        perplexity(tiny_model(context=64), tiny_tokenizer(), "inline", text=TEXT, seq_len=128, progress=False)


def test_prefix_is_bos_then_eos():
    tok = tiny_tokenizer()
    assert prefix_token_id(tok) == tok.bos_token_id

    class NoBos:
        bos_token_id = None
        eos_token_id = 7

    assert prefix_token_id(NoBos()) == 7


def test_local_text_and_jsonl_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world\n", encoding="utf-8")
    assert load_text(str(txt)) == ("hello world\n", str(txt.resolve()))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"page": "two"}) + "\n", encoding="utf-8")
    assert load_text(str(jsonl))[0] == "one\n\ntwo"


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(MiprunError, match="did you mean 'wikitext2'"):
        load_text("wikitxt2")


def test_named_sets_read_the_data_directory(monkeypatch):
    from miprun.data.datadir import local_file

    raw = local_file("wikitext-2-raw", "wiki.test.raw")
    if raw is None:
        pytest.skip("no local data directory")
    text, source = load_text("wikitext2")
    assert source == str(raw) and len(text.encode("utf-8")) == raw.stat().st_size
    text, source = load_text("wikitext2-tokenized")
    assert source.endswith("wikitext-2/test.txt") and "<unk>" in text


@pytest.mark.integration
def test_smollm2_wikitext2_first_windows(smollm2):
    """The default model on the first two 2048-token windows of WikiText-2 raw (~15 s)."""
    result = perplexity(smollm2.model, smollm2.tokenizer, "wikitext2", max_windows=2, progress=False)
    assert result.seq_len == 2048 and result.tokens == 2 * 2047
    assert 5 < result.perplexity < 40
