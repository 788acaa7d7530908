"""Selector ``given``: the user's own block set, removed, healed, checked and saved like any other."""

from __future__ import annotations

import json

import pytest
from conftest import save_tiny
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from miprun.cli.main import app
from miprun.contracts import SpanScores
from miprun.errors import MiprunError
from miprun.selectors.given_blocks import GivenSelector, parse_blocks


def test_blocks_are_read_as_indices_and_inclusive_ranges():
    assert parse_blocks("13-18,25") == [13, 14, 15, 16, 17, 18, 25]
    assert parse_blocks(" 4, 2 ") == [2, 4]
    for bad, words in (("3,x", "cannot read block 'x'"), ("5-3", "runs backwards"), ("1,1", "names a block twice"),
                       ("-2", "cannot read block")):
        with pytest.raises(MiprunError, match=words):
            parse_blocks(bad)
    scores = SpanScores(6, lambda first, length: 0.0, metric="mi", redundant_when_high=True)
    assert GivenSelector("0-1,4").select(scores, 3).blocks == [0, 1, 4]
    with pytest.raises(MiprunError, match="pass --prune 2"):
        GivenSelector("0-1").select(scores, 3)
    with pytest.raises(MiprunError, match=r"block\(s\) \[7\] do not exist; this model has blocks 0–5"):
        GivenSelector("4,7").select(scores, 2)
    with pytest.raises(MiprunError, match="needs the blocks to remove"):
        GivenSelector("")
    from miprun.registry import get_registry

    with pytest.raises(MiprunError, match=r"selector 'given' needs option blocks: pass -o selector.blocks=VALUE"):
        get_registry().create("selector", "given")  # checked with the other options, before any model loads


def test_a_given_set_with_block_0_of_a_tied_model_is_healed_at_plain_removals_size(tmp_path, text_file):
    """End to end through the CLI: blocks 0–1 of a tiny Llama whose head shares the embedding. The
    cut gets no fit of its own (the run says why), the blocks after it are refitted, and the saved
    checkpoint has plain removal's parameter count, keeps its tie and reloads."""
    model = save_tiny(tmp_path / "tiny", layers=5, seed=61)
    common = ["run", "--model", str(model), "--calib", str(text_file), "--seq-len", "16", "--num-samples", "4",
              "--heal-samples", "8", "--selector", "given", "-o", "selector.blocks=0-1", "--prune", "2"]
    healed = CliRunner().invoke(app, common + ["--heal", "linear", "--output", str(tmp_path / "healed")])  # named: kept
    plain = CliRunner().invoke(app, common + ["--heal", "none", "--output", str(tmp_path / "plain")])
    assert healed.exit_code == 0 and plain.exit_code == 0, healed.output + plain.output
    report = json.loads((tmp_path / "healed" / "miprun_report.json").read_text())
    assert report["selected_blocks"] == [0, 1] and "heal_preview" not in report["selection"]["info"]  # nothing judged
    cut = report["surgery"]["healing"]["cuts"][0]
    assert "shares the token embedding" in cut["not_fitted"] and cut["folded_into"] is None
    assert [after["refitted"] for after in cut["after_cut"]] == ["block 2 self_attn.o_proj", "block 3 self_attn.o_proj"]
    assert "not fitted: the output head" in healed.output
    sizes = [json.loads((tmp_path / d / "miprun_report.json").read_text())["surgery"]["parameters_after"]
             for d in ("healed", "plain")]
    assert sizes[0] == sizes[1]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "healed")
    assert reloaded.config.num_hidden_layers == 3 and reloaded.config.tie_word_embeddings
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
