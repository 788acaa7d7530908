"""``miprun select`` through the real app and Typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miprun.cli.main import app

FIXTURE = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "miprun_llama2_7b_table6.tsv"
needs_fixture = pytest.mark.skipif(
    not FIXTURE.exists(), reason=f"paper fixture {FIXTURE} is absent (shared/fixtures not checked out)"
)
EXAMPLE = ["--scores", str(FIXTURE), "--blocks", "32", "--prune", "5", "--missing-mi", "0.5"]


def run(*args: str):
    """Invoke ``miprun select ARGS``."""
    return CliRunner().invoke(app, ["select", *args])


def assert_one_line_error(result, message: str) -> None:
    """Exit code 2 with ``message`` on a single stderr line and nothing on stdout."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert result.stdout == ""


@needs_fixture
def test_worked_example_as_json():
    result = run(*EXAMPLE, "--selector", "fast-block-select", "--trace", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["blocks"] == [24, 25, 26, 27, 28]
    assert out["selector"] == "fast-block-select"
    assert out["options"] == {"k": 5, "conflict": "greedy-longest-first", "max_iterations": 20}
    assert out["evaluations"] == 49
    first, second = out["trace"]
    assert (first["P"], first["A"]) == ([23, 24, 26, 27, 28], [20, 21, 22, 25, 29])
    assert [(g["length"], g["K"]) for g in first["groups"]] == [(2, 5), (3, 6)]
    assert [g["choice"]["blocks"] for g in first["groups"]] == [[24, 25], [26, 27, 28]]
    assert second["P"] == second["new_P"] == [24, 25, 26, 27, 28]
    assert second["changed"] is False and second["stop"] == "converged"


@needs_fixture
def test_worked_example_with_max_sum():
    result = run(*EXAMPLE, "--selector", "fast-block-select", "--conflict", "max-sum", "--trace", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["blocks"] == [24, 25, 26, 27, 28]
    assert out["options"]["conflict"] == "max-sum"
    picks = sorted(g["choice"]["blocks"] for g in out["trace"][0]["groups"])
    assert picks == [[23, 24, 25], [26, 27]]


@needs_fixture
def test_json_without_trace_has_an_empty_trace_and_k_is_passed_on():
    out = json.loads(run(*EXAMPLE, "--selector", "fast-block-select", "--k", "1", "--json").stdout)
    assert out["options"]["k"] == 1 and out["trace"] == []
    assert len(out["blocks"]) == 5


@needs_fixture
def test_rich_output_with_trace():
    result = run(*EXAMPLE, "--selector", "fast-block-select", "--trace")
    assert result.exit_code == 0, result.output
    assert "blocks: [24, 25, 26, 27, 28]" in result.stdout
    assert "iteration 1: P = {23, 24, 26, 27, 28}  A = {20, 21, 22, 25, 29}" in result.stdout
    assert "iteration 2" in result.stdout and "(converged)" in result.stdout


@needs_fixture
def test_greedy_and_brute_force_on_the_table():
    greedy = json.loads(run(*EXAMPLE, "--selector", "greedy", "--json").stdout)
    assert greedy["blocks"] == [23, 24, 26, 27, 28] and greedy["evaluations"] == 32
    brute = json.loads(run(*EXAMPLE, "--selector", "brute-force", "--json").stdout)
    assert brute["blocks"] == [24, 25, 26, 27, 28] and brute["evaluations"] > 49
    result = run(*EXAMPLE, "--selector", "greedy", "--trace")
    assert result.exit_code == 0 and "single-block ranking" in result.stdout


@needs_fixture
@pytest.mark.parametrize(
    "args, message",
    [
        (["--selector", "fast-block-selct"], "did you mean 'fast-block-select'"),
        (["--selector", "brute-force", "--k", "3"], "has no option 'k'"),
        (["--selector", "fast-block-select", "--conflict", "max-sun"], "did you mean 'max-sum'"),
        (["--selector", "greedy", "--prune", "32"], "cannot prune 32 of 32 blocks"),
        (["--selector", "greedy", "--blocks", "20"], "reaches past the 20 blocks"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, message):
    base = [a for a in EXAMPLE]
    for flag in ("--prune", "--blocks"):
        if flag in args:
            i = base.index(flag)
            del base[i:i + 2]
    assert_one_line_error(run(*base, *args), message)


@needs_fixture
def test_missing_span_without_default_is_an_error():
    result = run("--scores", str(FIXTURE), "--blocks", "32", "--prune", "5", "--selector", "greedy")
    assert_one_line_error(result, "--missing-mi")


def test_missing_file_is_a_one_line_error(tmp_path):
    result = run("--scores", str(tmp_path / "nope.tsv"), "--blocks", "8", "--prune", "2",
                 "--selector", "greedy")
    assert_one_line_error(result, "score table not found")


def test_small_table_without_fixture(tmp_path):
    path = tmp_path / "mi.tsv"
    path.write_text("first_layer\tlength\tmi\n" + "".join(f"{i}\t1\t{v}\n" for i, v in enumerate([0.2, 0.9, 0.8, 0.1])) + "1\t2\t0.7\n")
    out = json.loads(run("--scores", str(path), "--blocks", "4", "--prune", "2",
                         "--selector", "brute-force", "--missing-mi", "0", "--json").stdout)
    assert out["blocks"] == [1, 2]


def test_scores_plot_draws_the_span_heatmap_with_the_selection(tmp_path, text_file):
    from conftest import build_tiny
    from typer.testing import CliRunner

    import miprun
    from miprun.cli.main import app

    out = tmp_path / "run"
    miprun.prune(build_tiny("llama", layers=6), n=2, calib=str(text_file), num_samples=4, seq_len=16,
                 method="mi-prun-local", output=out)
    png = tmp_path / "spans.png"
    result = CliRunner().invoke(app, ["scores", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_prose_file_as_the_table_is_one_short_line_and_a_misspelt_selector_is_told_first(tmp_path):
    """A text file passed as ``--scores`` is named with its first 57 characters, not echoed whole;
    the selector's name is checked before the file is read."""
    prose = tmp_path / "notes.txt"
    prose.write_text("the quick brown fox jumps over the lazy dog " * 50 + "\n")
    result = run("--scores", str(prose), "--blocks", "8", "--prune", "2", "--selector", "greedy")
    assert_one_line_error(result, f"{prose} line 1: header 'the quick brown fox jumps over the lazy dog the quick bro...' "
                                  f"must name the columns first_layer, length and mi")
    assert len(result.stderr) < 200 + len(str(prose))
    assert_one_line_error(run("--scores", str(prose), "--blocks", "8", "--prune", "2", "--selector", "gredy"),
                          "did you mean 'greedy'")
