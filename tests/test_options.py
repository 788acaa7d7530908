"""Strategy options and CLI values from a hostile user: converted and checked once, one error line.

Property tests (hypothesis) feed arbitrary ``-o KIND.KEY=VALUE`` strings and arbitrary values for the
options of ``run``, ``compare``, ``eval``, ``select`` and ``scores``: every invocation either
succeeds or exits non-zero with a ``miprun: error:`` line (or click's usage message), never with a
Python traceback, and never leaves an output directory behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from miprun.cli.main import app
from miprun.errors import MiprunError
from miprun.hookspecs import KINDS
from miprun.plans import resolve_plan
from miprun.registry import get_registry

TABLE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "miprun_llama2_7b_table6.tsv"
runner = CliRunner()

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
numbers = st.one_of(st.integers(-10**9, 10**9).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr))
values = st.one_of(text, numbers, st.sampled_from(["true", "false", "none", "auto", "off", "[1, 2]", "1e400", "-0"]))


def option_keys() -> list[str]:
    registry = get_registry()
    keys = {f"{kind}.{key}" for kind in KINDS for name in registry.names(kind)
            for key in registry.get(kind, name).options()}
    return sorted(keys | {"estimator.nope", "scorer.", "bogus.k"})


def invoke(args: list[str], tmp_path: Path):
    result = runner.invoke(app, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"miprun {' '.join(args)} raised {result.exception!r}")
    return result


def check(result) -> None:
    """Success, or one ``miprun: error:`` line (exit 2), or click's usage error (exit 2) — nothing else."""
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and lines, result.output[-500:]
        assert lines[-1].startswith("miprun: error:") or ("Usage:" in result.output and "Error" in lines[-2] + lines[-1]
                                                           or any(line.startswith("│ ") for line in lines)), result.output[-500:]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real tiny checkpoint, so that a silently accepted bad value runs (and fails the test)."""
    from conftest import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", layers=3, seed=71)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from conftest import WORDS

    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(" ".join(WORDS * 6))
    return path


SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(items=st.lists(st.tuples(st.sampled_from(option_keys()), values), max_size=3),
       extra=st.lists(st.sampled_from(["--estimator", "--selector", "--scorer", "--method", "--granularity"]), max_size=2),
       name=st.sampled_from(["renyi", "fast-block-select", "output-mi", "neuron", "block", "mi-prun", "shortgpt", "x+y", ""]))
def test_run_with_arbitrary_strategy_options_never_tracebacks(tmp_path, tiny_model, tiny_text, items, extra, name):
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    args = ["run", "--model", str(tiny_model), "--calib", str(tiny_text), "--num-samples", "2", "--seq-len", "8",
            "--heal-samples", "2", "--prune", "1", "--output", str(out)]
    for key, value in items:
        args += ["-o", f"{key}={value}"]
    for flag in extra:
        args += [flag, name]
    result = invoke(args, tmp_path)
    check(result)
    if result.exit_code == 0:  # accepted: a whole checkpoint that records what was asked
        report = json.loads((out / "miprun_report.json").read_text())
        for key, value in items:
            kind, _, option = key.partition(".")
            if kind in report["strategies"] and option in report["strategies"][kind]["options"]:
                assert str(report["strategies"][kind]["options"][option]).lower() != "nan"
    else:
        assert not out.exists()  # refused: nothing written


@SETTINGS
@given(prune=numbers, ratio=numbers, samples=numbers, seq_len=numbers, seed=numbers, calib=text, dtype=text)
def test_run_and_compare_with_arbitrary_values_never_traceback(tmp_path, tiny_model, prune, ratio, samples, seq_len,
                                                               seed, calib, dtype):
    for command in (["run", "--prune", prune, "--ratio", ratio, "--heal-samples", "2"],
                    ["compare", "--prune", prune, "--methods", "random", "--heal", "none"]):
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        args = [*command, "--model", str(tiny_model), "--num-samples", samples, "--seq-len", seq_len,
                "--seed", seed, "--calib", calib, "--dtype", dtype, *(["--output", str(out)] if command[0] == "run" else [])]
        result = invoke(args, tmp_path)
        check(result)
        assert result.exit_code != 0 or command[0] == "compare" or (out / "miprun_report.json").exists()
        if result.exit_code != 0:
            assert not out.exists()


@SETTINGS
@given(blocks=numbers, prune=numbers, k=numbers, missing=numbers, selector=st.sampled_from(
    ["greedy", "fast-block-select", "brute-force", "set-exchange", "sleb", "gredy", ""]), conflict=text)
def test_select_with_arbitrary_values_never_tracebacks(tmp_path, blocks, prune, k, missing, selector, conflict):
    args = ["select", "--scores", str(TABLE), "--blocks", blocks, "--prune", prune, "--selector", selector,
            "--k", k, "--missing-mi", missing, "--conflict", conflict]
    check(invoke(args, tmp_path))


@SETTINGS
@given(content=st.one_of(st.binary(max_size=200), st.dictionaries(
    st.sampled_from(["span_table", "block_scores", "selected_blocks", "screen", "rerun", "model"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3),
              st.dictionaries(st.sampled_from(["metric", "span_table", "model", "first", "n", "options", "seed"]),
                              st.one_of(st.integers(), st.text(max_size=4), st.none()), max_size=3)),
).map(lambda d: json.dumps(d).encode())), name=st.sampled_from(["miprun_report.json", "table.tsv"]))
def test_scores_select_and_eval_on_arbitrary_files_never_traceback(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    check(invoke(["scores", str(path)], tmp_path))
    check(invoke(["select", "--scores", str(path), "--blocks", "32", "--prune", "2", "--selector", "greedy"], tmp_path))
    check(invoke(["eval", str(tmp_path), "--ppl", str(path), "--limit", "3"], tmp_path))
    check(invoke(["run", "--from-report", str(path)], tmp_path))


def test_option_values_are_converted_and_checked_against_the_factory_signature():
    plan = resolve_plan(estimator="renyi", options={"estimator": {"alpha": "1.5"}, "selector": {"k": 3.0}})
    assert plan.options["estimator"]["alpha"] == 1.5 and plan.options["selector"]["k"] == 3
    assert isinstance(plan.options["selector"]["k"], int)
    with pytest.raises(MiprunError, match=r"estimator 'renyi': option 'alpha' must be a number, got 'abc'"):
        resolve_plan(estimator="renyi", options={"estimator": {"alpha": "abc"}})
    with pytest.raises(MiprunError, match=r"selector 'fast-block-select': option 'k' must be a whole number, got 2.5"):
        resolve_plan(selector="fast-block-select", options={"selector": {"k": 2.5}})
    with pytest.raises(MiprunError, match=r"option 'self_normalize' must be true or false, got 'maybe'"):
        resolve_plan(estimator="renyi", options={"estimator": {"self_normalize": "maybe"}})
    with pytest.raises(MiprunError, match=r"option 'alpha' must be a number, got nan"):
        resolve_plan(estimator="renyi", options={"estimator": {"alpha": float("nan")}})
    # int | str (screen): a number stays a number, a word reaches the factory's own check
    assert resolve_plan(options={"scorer": {"screen": "4"}}).options["scorer"]["screen"] == 4


def test_a_bad_option_value_on_the_command_line_is_one_error_line_naming_option_and_fix(tmp_path):
    result = invoke(["run", "--estimator", "renyi", "-o", "estimator.alpha=abc"], tmp_path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("miprun: error: estimator 'renyi': option 'alpha' must be a "
                                                      "number, got 'abc'")
