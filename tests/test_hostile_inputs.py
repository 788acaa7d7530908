"""Hostile inputs, round three: one class per table row, each answered by one ``miprun: error:``
line, exit 2, nothing written — or, for a broken third-party plugin, one warning line naming it
and its package while everything else keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tokenizer, save_tiny
from typer.testing import CliRunner

from miprun.cli.main import app


@pytest.fixture
def tiny_dir(tmp_path):
    """A tiny Llama checkpoint with its tokenizer."""
    return save_tiny(tmp_path / "tiny")


def _refused(args: list[str], message: str, output: Path) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("miprun: error:") and message in lines[-1], result.stderr
    assert "Traceback" not in result.output and not output.exists()


@pytest.mark.parametrize("dtype, hint", [("float99", "unknown dtype 'float99'"), ("bfloat", "did you mean 'bfloat16'"),
                                         ("cuda", "choose one of: auto, float32, bfloat16, float16")])
@pytest.mark.parametrize("extra", [[], ["--max-memory", "1KB"], ["--layerwise"]])
def test_a_dtype_torch_does_not_have(tiny_dir, text_file, tmp_path, dtype, hint, extra):
    out = tmp_path / "out"
    _refused(["run", "--model", str(tiny_dir), "--calib", str(text_file), "--seq-len", "16", "--dtype", dtype,
              "--output", str(out), *extra], hint, out)


def test_a_dtype_is_checked_by_every_command(tiny_dir, text_file, tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tiny_dir), "--ppl", str(text_file), "--dtype", "float64x"])
    assert result.exit_code == 2 and "unknown dtype 'float64x'" in result.stderr
    result = CliRunner().invoke(app, ["compare", "--model", str(tiny_dir), "--prune", "1", "--methods", "random",
                                      "--dtype", "half"])
    assert result.exit_code == 2 and "unknown dtype 'half'" in result.stderr


@pytest.mark.parametrize("make_output", [
    lambda tmp: tmp / "a-file.txt" / "out",             # below a file
    lambda tmp: tmp / "a-file.txt" / "deeper" / "out",  # further below a file
])
def test_an_output_that_can_never_be_created_is_refused_before_any_work(tiny_dir, text_file, tmp_path, make_output):
    (tmp_path / "a-file.txt").write_text("not a directory")
    out = make_output(tmp_path)
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_dir), "--calib", str(text_file), "--seq-len", "16",
                                      "--output", str(out)])
    assert result.exit_code == 2 and "cannot be created" in result.stderr and "is a file" in result.stderr
    assert "load" not in result.stderr.replace("miprun: error:", "")  # refused before loading the model
    assert (tmp_path / "a-file.txt").read_text() == "not a directory"


def test_a_tokenizer_whose_ids_exceed_the_embedding(tmp_path, text_file):
    """A checkpoint whose embedding has fewer rows than its tokenizer's ids (a foreign tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = build_tokenizer()
    config = AutoConfig.for_model("llama", vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    path = tmp_path / "small-vocab"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    out = tmp_path / "out"
    _refused(["run", "--model", str(path), "--calib", str(text_file), "--seq-len", "16", "--output", str(out)],
             "the model's embedding has 20 rows", out)
    result = CliRunner().invoke(app, ["eval", str(path), "--ppl", str(text_file), "--seq-len", "16"])
    assert result.exit_code == 2 and "does not belong to this model" in result.stderr


def _plugin_site(tmp_path: Path, module_source: str | None, value: str) -> Path:
    """A site directory holding a distribution 'brokenpkg' 1.0 whose ``miprun`` entry point is
    ``value`` (and a module ``bad_plugin`` with ``module_source`` when given)."""
    site = tmp_path / "site"
    info = site / "brokenpkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenpkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[miprun]\nbroken = {value}\n")
    if module_source is not None:
        (site / "bad_plugin.py").write_text(module_source)
    return site


@pytest.mark.parametrize("source, value, reason", [
    (None, "no_such_module_xyz", "ModuleNotFoundError"),
    ("raise RuntimeError('boom at import')\n", "bad_plugin", "RuntimeError: boom at import"),
    ("import miprun\n", "bad_plugin:missing_attribute", "AttributeError"),
])
def test_a_plugin_that_fails_to_import_is_named_and_skipped(tmp_path, source, value, reason):
    site = _plugin_site(tmp_path, source, value)
    env = {k: v for k, v in os.environ.items() if k != "MIPRUN_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for args in (["list", "selector"], ["plugins", "--json"]):
        done = subprocess.run([sys.executable, "-m", "miprun.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        warnings = [line for line in done.stderr.splitlines() if line.startswith("miprun: warning:")]
        assert len(warnings) == 1 and "'broken'" in warnings[0] and "brokenpkg 1.0" in warnings[0]
        assert reason in warnings[0] and "Traceback" not in done.stderr
    plugins = {p["plugin"]: p for p in json.loads(done.stdout)}
    assert plugins["broken"]["package"] == "brokenpkg" and reason in plugins["broken"]["error"]
    assert plugins["miprun.builtins"]["provides"]["selector"]  # the rest works


@pytest.mark.parametrize("value", ["\r", "a\nb", "\x1b[31mred", "tab\there"])
def test_control_characters_in_a_value_stay_on_the_one_error_line(tiny_dir, value):
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_dir), "--dtype", value])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "\r" not in result.stderr and "\x1b" not in result.stderr
    assert result.stderr.startswith("miprun: error: unknown dtype")


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.5", "--granularity", "neuron"], "--ratio must be between 0 and 1 (exclusive), got 1.5"),
    (["--prune", "0"], "--prune must be at least 1, got 0"),
    (["--prune", "2", "--ratio", "0.1"], "give either --prune N or --ratio r, not both"),
    (["--calib", "wikitxt2"], "did you mean 'wikitext2'?"),
    (["--calib", "missing-file.txt"], "calibration file 'missing-file.txt' does not exist"),
    (["--num-samples", "0"], "need --num-samples ≥ 1 and --seq-len ≥ 2"),
    (["--prune", "1", "--eval", "wikitxt2"], "unknown perplexity data set 'wikitxt2' (did you mean 'wikitext2'?)"),
])
def test_what_needs_no_model_is_refused_before_the_model_loads(tmp_path, args, message):
    """A model that does not exist is never reached: the arguments are refused first (on a 70B
    model, loading before refusing a typo would take minutes)."""
    out = tmp_path / "out"
    _refused(["run", "--model", str(tmp_path / "no-such-model"), *args, "--output", str(out)], message, out)


@pytest.mark.parametrize("args, message", [
    (["--prune", "1", "--calib", "wikitxt2"], "did you mean 'wikitext2'?"),
    (["--prune", "1", "--num-samples", "0"], "need --num-samples ≥ 1 and --seq-len ≥ 2"),
    (["--prune", "1", "--eval", "wikitxt2"], "unknown perplexity data set 'wikitxt2' (did you mean 'wikitext2'?)"),
    (["--prune", "1", "--tasks", "sst22"], "unknown lm-eval task 'sst22' (did you mean 'sst2'?)"),
])
def test_compare_refuses_what_needs_no_model_before_loading_it(tmp_path, args, message, monkeypatch):
    from miprun.evaluation import lm_eval_bridge

    class Manager:  # lm-eval's index of its tasks (building the real one takes seconds)
        all_tasks = all_subtasks = ["sst2", "hellaswag"]

    monkeypatch.setattr(lm_eval_bridge, "standard_task_manager", lambda: Manager())
    monkeypatch.setattr(lm_eval_bridge, "local_available", lambda name: False)
    result = CliRunner().invoke(app, ["compare", "--model", str(tmp_path / "no-such-model"), "--methods", "random", *args])
    assert result.exit_code == 2 and message in result.stderr and "no-such-model" not in result.stderr
