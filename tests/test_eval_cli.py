"""``miprun eval`` through Typer's test runner, on tiny checkpoints saved to a temporary directory."""

from __future__ import annotations

import json

import pytest
from test_eval_helpers import CORPUS, tiny_model, tiny_tokenizer
from typer.testing import CliRunner

from miprun.cli.main import app
from miprun.evaluation.local_tasks import local_available
from miprun.models.adapters import adapter_for


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 3-block dense checkpoint and the same model with its middle block removed."""
    root = tmp_path_factory.mktemp("ckpt")
    tok = tiny_tokenizer()
    dense = tiny_model(layers=3)
    dense.save_pretrained(root / "dense")
    tok.save_pretrained(root / "dense")
    adapter_for(dense).keep_blocks([0, 2])
    dense.save_pretrained(root / "pruned")
    tok.save_pretrained(root / "pruned")
    text = root / "text.txt"
    text.write_text(" ".join(CORPUS * 4), encoding="utf-8")
    return root


@pytest.mark.skipif(not local_available("sst2"), reason="the shared data directory is not here")
def test_eval_writes_json_and_markdown(checkpoints):
    out_json, out_md = checkpoints / "out.json", checkpoints / "out.md"
    args = [
        "eval", str(checkpoints / "pruned"), "--ppl", str(checkpoints / "text.txt"), "--seq-len", "32",
        "--tasks", "sst2,cb", "--limit", "2", "--latency", "--repeats", "1", "--prefill-len", "8",
        "--decode-batch", "2", "--decode-tokens", "2", "--generate", "--prompt", "The quick", "--max-new-tokens", "3",
        "--compare-to", str(checkpoints / "dense"), "--json", str(out_json), "--markdown", str(out_md),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert "partial" not in report  # the partial saves made during the run were replaced
    assert report["model"]["num_blocks"] == 2
    assert report["perplexity"][str(checkpoints / "text.txt")]["perplexity"] > 1
    assert set(report["tasks"]) == {"sst2", "cb"} and "f1" in report["tasks"]["cb"]
    assert report["size"]["checkpoint_bytes"] > 0
    comparison = report["comparison"]
    assert comparison["blocks"] == {"dense": 3, "pruned": 2, "removed": 1}
    assert comparison["ideal_speedup"] == pytest.approx(1.5)
    assert comparison["prefill_speedup"] > 0 and comparison["decode_speedup"] > 0
    assert comparison["generation"][0]["prompt"] == "The quick"
    markdown = out_md.read_text()
    assert "### Dense vs pruned" in markdown and "| sst2 |" in markdown
    assert "Dense vs pruned" in result.stdout


def test_missing_model_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nowhere"), "--ppl", "none"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("miprun: error: model path")


def test_unknown_perplexity_set_is_one_line_exit_2(checkpoints):
    result = CliRunner().invoke(app, ["eval", str(checkpoints / "dense"), "--ppl", "wikitxt2"])
    assert result.exit_code == 2
    assert "did you mean 'wikitext2'" in result.stderr and result.stderr.strip().count("\n") == 0


def test_bad_task_names_and_window_sizes_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    """A misspelt task, a window of fewer than 2 tokens or no windows: one line, exit 2, and the
    model (here a path that does not exist) is never reached."""
    from miprun.evaluation import lm_eval_bridge

    class Manager:  # lm-eval's index of its tasks (building the real one takes seconds)
        all_tasks = ["hellaswag", "arc_easy"]
        all_subtasks = ["hellaswag", "arc_easy"]

    monkeypatch.setattr(lm_eval_bridge, "standard_task_manager", lambda: Manager())
    for args, message in ((["--tasks", "hellaswg"], "unknown lm-eval task 'hellaswg' (did you mean 'hellaswag'?)"),
                          (["--seq-len", "0"], "--seq-len must be at least 2 tokens, got 0"),
                          (["--max-windows", "0"], "--max-windows must be at least 1, got 0")):
        result = CliRunner().invoke(app, ["eval", str(tmp_path / "nowhere"), *args])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert result.stderr.strip().count("\n") == 0 and "nowhere" not in result.stderr
