"""The command line: listings, and bad input that must fail with one clear line and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import WORDS, build_tiny

from miprun.cli.main import main


def run_cli(capsys, monkeypatch, *args):
    """Run ``miprun ARGS`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["miprun", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err):
    """The ``miprun: error:`` lines of stderr (progress lines may precede them)."""
    return [line for line in err.splitlines() if line.startswith("miprun: error:")]


@pytest.fixture
def tiny_dir(tmp_path):
    loaded = build_tiny("llama", layers=4)
    path = tmp_path / "tiny"
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(WORDS * 20))
    return path, calib


def test_list_and_plugins_json_show_every_kind(capsys, monkeypatch):
    code, out, _ = run_cli(capsys, monkeypatch, "list", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["kind"] for r in rows} == {"collector", "estimator", "scorer", "selector", "surgeon", "healer", "architecture"}
    healers = {r["name"]: r for r in rows if r["kind"] == "healer"}
    assert set(healers) == {"linear", "neuron-linear", "replaceme"}
    code, out, _ = run_cli(capsys, monkeypatch, "plugins", "--json")
    builtins = next(p for p in json.loads(out) if p["plugin"] == "miprun.builtins")
    assert set(builtins["provides"]["estimator"]) >= {"renyi", "ksg", "gaussian"}
    assert builtins["provides"]["healer"] == ["linear", "neuron-linear", "replaceme"]
    code, out, _ = run_cli(capsys, monkeypatch, "list", "selector", "--json")
    assert {r["name"] for r in json.loads(out)} >= {"greedy", "fast-block-select", "brute-force"}


def test_unknown_estimator_is_one_line_naming_the_choices():
    done = subprocess.run([sys.executable, "-m", "miprun.cli.main", "run", "--estimator", "no-such-thing"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown estimator 'no-such-thing'" in lines[0] and "valid choices:" in lines[0]
    assert all(name in lines[0] for name in ("gaussian", "gaussian-channel", "ksg", "renyi"))


@pytest.mark.parametrize("args, line", [
    (["run", "--prune", "abc"], "miprun: error: Invalid value for '--prune' / '-n': Input should be a valid integer, "
                                "unable to parse string as an integer; see 'miprun run --help'"),
    (["plugins", "--jsn"], "miprun: error: No such option: --jsn (Possible options: --json); see 'miprun plugins --help'"),
    (["prnue"], "miprun: error: No such command 'prnue'; see 'miprun --help'"),
])
def test_a_usage_error_of_the_console_script_is_one_line(args, line):
    """Typos in options and commands, caught by click before any command runs, end like every other
    error: one ``miprun: error:`` line naming the fix, exit code 2 (not a boxed multi-line panel)."""
    done = subprocess.run([sys.executable, "-m", "miprun.cli.main", *args], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [line] and done.stdout == ""
    alone = subprocess.run([sys.executable, "-m", "miprun.cli.main"], capture_output=True, text=True)
    assert alone.returncode == 2 and "Usage: " in alone.stdout and "run" in alone.stdout  # no arguments: the help


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune", "4"], "--prune 4 would remove every block: the model has 4 blocks"),
        (["--prune", "0"], "--prune must be at least 1"),
        (["--ratio", "1.5"], "--ratio must be between 0 and 1"),
        (["--option", "estimator"], "is not KIND.KEY=VALUE"),
        (["--method", "shortgpt", "--option", "collector.max_tokns=5"], "no option 'max_tokns' (did you mean 'max_tokens'?)"),
    ],
)
def test_bad_run_arguments_fail_cleanly_and_write_nothing(capsys, monkeypatch, tmp_path, tiny_dir, args, message):
    model, calib = tiny_dir
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, monkeypatch, "run", "--model", str(model), "--calib", str(calib),
                           "--output", str(out), *args)
    errors = error_lines(err)
    assert code == 2 and len(errors) == 1 and message in errors[0] and err.strip().endswith(errors[0])
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "tiny"]


def test_missing_model_and_non_empty_output(capsys, monkeypatch, tmp_path, tiny_dir):
    model, calib = tiny_dir
    code, _, err = run_cli(capsys, monkeypatch, "run", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "o").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep")
    code, _, err = run_cli(capsys, monkeypatch, "run", "--model", str(model), "--calib", str(calib), "--output", str(busy))
    assert code == 2 and "not empty" in err and (busy / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in busy.iterdir()) == ["precious.txt"]


def test_run_then_scores_on_a_tiny_model(capsys, monkeypatch, tmp_path, tiny_dir):
    model, calib = tiny_dir
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, monkeypatch, "run", "--model", str(model), "--calib", str(calib), "--prune", "1",
                                "--num-samples", "2", "--seq-len", "16", "--estimator", "renyi", "--output", str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert len(report["selected_blocks"]) == 1 and (out / "model.safetensors").exists()
    code, stdout, _ = run_cli(capsys, monkeypatch, "scores", str(out), "--json")
    table = json.loads(stdout)
    assert code == 0 and table["metric"] == "mi" and len([r for r in table["spans"] if r["length"] == 1]) == 4
    # the source model's files are untouched
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                         "tokenizer.json", "tokenizer_config.json"]
