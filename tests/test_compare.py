"""``miprun compare`` on a tiny random model: one calibration sample, the dense row first, costs,
JSON / Markdown output, the pruning-curve mode and its optional plot."""

from __future__ import annotations

import builtins
import json

import pytest
from conftest import build_tiny
from typer.testing import CliRunner

import miprun
from miprun.cli.main import app
from miprun.compare import compare, parse_depths, to_markdown
from miprun.errors import MiprunError
from miprun.methods import METHODS, parse_methods
from miprun.options import parse_method_options

pytestmark = pytest.mark.usefixtures("one_thread")

ROW_KEYS = {"method", "prune", "blocks", "perplexity", "tasks", "cost", "strategies", "selection"}


@pytest.fixture
def tiny_checkpoint(tmp_path):
    loaded = build_tiny("llama", layers=5)
    path = tmp_path / "tiny"
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


def test_compare_shares_one_calibration_sample_and_reports_quality_and_cost(text_file):
    loaded = build_tiny("llama", layers=6)
    partial = []
    report = compare(loaded, prune=2, methods=["shortgpt", "sleb", "random", "angular"], calib=str(text_file),
                     num_samples=4, seq_len=16, ppl=(str(text_file),), eval_seq_len=16, eval_max_windows=3,
                     on_row=lambda r: partial.append((len(r["rows"]), r["complete"])))
    assert partial == [(i, False) for i in range(1, 10)] and report["complete"]
    rows = report["rows"]
    # healed by default, each healed row beside the plain row of the same selection
    assert [r["method"] for r in rows] == ["dense"] + [f"{m}{h}" for m in ("shortgpt", "sleb", "random", "angular")
                                                      for h in ("", "+heal")]
    assert all(rows[i]["blocks"] == rows[i + 1]["blocks"] for i in range(1, 9, 2))
    assert all(ROW_KEYS <= set(r) for r in rows)
    assert rows[0]["blocks"] == [] and rows[0]["prune"] == 0
    assert all(len(r["blocks"]) == 2 and r["prune"] == 2 for r in rows[1:])
    assert all(set(r["cost"]) >= {"seconds", "forward_passes", "mi_evaluations", "peak_memory_mb"} for r in rows)
    assert all(isinstance(r["perplexity"][str(text_file)], float) for r in rows)
    by = {r["method"]: r for r in rows}
    assert by["sleb"]["cost"]["forward_passes"] == 6 + 5 + 1 > by["shortgpt"]["cost"]["forward_passes"] == 1
    assert by["random"]["cost"]["forward_passes"] == 0
    # the same calibration, seed and strategies as `miprun run` give the same selection
    single = miprun.prune(build_tiny("llama", layers=6), n=2, calib=str(text_file), num_samples=4, seq_len=16,
                          method="shortgpt", save=False)
    assert by["shortgpt"]["blocks"] == single.selection.blocks
    assert loaded.adapter.num_blocks == 6  # the model handed in is never pruned
    markdown = to_markdown(report)
    assert markdown.count("\n| ") == 10 and "| dense | 0 | — |" in markdown
    json.dumps(report, allow_nan=False)


def test_mi_methods_count_mi_evaluations_for_the_greedy_vs_iterative_ablation(text_file):
    report = compare(build_tiny("llama", layers=6), prune=2,
                     methods="mi-greedy,mi-prun,mi-prun-local,mi-brute-force",
                     calib=str(text_file), num_samples=8, seq_len=24, ppl=())
    costs = {r["method"]: r["cost"]["mi_evaluations"] for r in report["rows"][1:]}
    assert costs["mi-greedy"] == 6 and costs["mi-prun"] > 6  # the set refinement scores sets beyond the singles
    # the span searches read every single block at least; their totals are not ordered in general
    # (tests/test_selector_properties.py::test_whole_run_totals_can_differ_either_way)
    assert costs["mi-brute-force"] >= 6 and costs["mi-prun-local"] >= 6
    assert all(r["perplexity"] == {} for r in report["rows"])


def test_cli_writes_json_and_markdown(tmp_path, tiny_checkpoint, text_file):
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    result = CliRunner().invoke(app, [
        "compare", "--model", str(tiny_checkpoint), "--calib", str(text_file), "--prune", "1",
        "--methods", "shortgpt,random", "--eval", str(text_file), "--eval-seq-len", "16", "--eval-max-windows", "2",
        "--num-samples", "4", "--seq-len", "16", "--json", str(out), "--markdown", str(md),
        "--option", "random.selector.seed=5", "--heal", "none",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["rows"]] == ["dense", "shortgpt", "random"] and data["complete"]
    assert data["rows"][2]["strategies"]["selector"]["options"] == {"seed": 5}
    assert "| shortgpt | 1 |" in md.read_text()
    assert "shortgpt" in result.output


def test_curve_mode_writes_a_png_and_the_table_behind_it(tmp_path, tiny_checkpoint, text_file):
    png = tmp_path / "curve.png"
    result = CliRunner().invoke(app, [
        "compare", "--model", str(tiny_checkpoint), "--calib", str(text_file), "--prune", "1,2,3",
        "--methods", "shortgpt,angular,random", "--eval", str(text_file), "--eval-seq-len", "16",
        "--eval-max-windows", "2", "--num-samples", "4", "--seq-len", "16", "--plot", str(png), "--heal", "none",
    ])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = png.with_suffix(".csv").read_text().splitlines()
    assert lines[0].startswith("method,prune,blocks") and len(lines) == 1 + 1 + 3 * 3


def test_curve_mode_without_matplotlib_fails_before_pruning(monkeypatch, tmp_path, tiny_checkpoint):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = CliRunner().invoke(app, ["compare", "--model", str(tiny_checkpoint), "--prune", "1,2", "--methods", "random"])
    assert result.exit_code == 2 and "miprun: error:" in result.stderr and "pip install matplotlib" in result.stderr
    from miprun.plotting import check_plot_path  # what `miprun scores --plot` checks first

    with pytest.raises(MiprunError, match="pip install matplotlib"):
        check_plot_path(tmp_path / "spans.png")


def test_bad_arguments_are_clear_errors():
    with pytest.raises(MiprunError, match="did you mean 'sleb'"):
        parse_methods("sleeb")
    with pytest.raises(MiprunError, match="comma list"):
        parse_depths("2,x")
    assert parse_depths("6,2,4,2") == [2, 4, 6]
    with pytest.raises(MiprunError, match="METHOD.KIND.KEY=VALUE"):
        parse_method_options(["selector=3"])
    assert parse_method_options(["laco.selector.threshold=0.5"]) == {"laco": {"selector": {"threshold": 0.5}}}
    assert {"mi-prun", "shortgpt", "angular", "sleb", "ppl", "taylor", "laco", "random", "magnitude"} <= set(METHODS)
    with pytest.raises(MiprunError, match="options given for estimator, which this run does not use"):
        compare(None, methods=["sleb"], options={"sleb": {"estimator": {"alpha": 2}}})
    with pytest.raises(MiprunError, match=r"unknown estimator 'reny' \(did you mean 'renyi'\?\)"):
        parse_methods("block-mi:reny+fast-block-select")
    with pytest.raises(MiprunError, match=r"is not SCORER\[:ESTIMATOR\]\+SELECTOR"):
        parse_methods("block-mi+")


def test_combinations_compare_any_registered_strategies_like_named_methods(text_file, monkeypatch):
    from miprun.collectors.hidden_states import HiddenStatesCollector

    runs = []
    collect = HiddenStatesCollector.collect
    monkeypatch.setattr(HiddenStatesCollector, "collect", lambda self, *a, **k: runs.append(1) or collect(self, *a, **k))
    report = compare(build_tiny("llama", layers=6), prune=2, methods="shortgpt,block-influence+greedy,block-mi:renyi+fast-block-select,angular", heal="none",
                     calib=str(text_file), num_samples=4, seq_len=16, ppl=())
    rows = {r["method"]: r for r in report["rows"][1:]}
    # a combination of the same strategies is the same method: same blocks, same cost
    assert rows["block-influence+greedy"]["blocks"] == rows["shortgpt"]["blocks"]
    assert rows["block-influence+greedy"]["strategies"]["scorer"]["name"] == "block-influence"
    named = rows["block-mi:renyi+fast-block-select"]["strategies"]
    assert (named["scorer"]["name"], named["estimator"]["name"], named["selector"]["name"]) == ("block-mi", "renyi", "fast-block-select")
    # a bare scorer name runs with its declared partner selector
    assert rows["angular"]["strategies"]["selector"]["name"] == "best-span"
    # hidden states are collected once and shared by the four methods that read them
    assert list(report["settings"]["collection"]) == ["hidden-states"] and len(runs) == 1
    assert all(rows[m]["strategies"].get("collector", {}).get("name") == "hidden-states"
               for m in ("shortgpt", "block-influence+greedy", "block-mi:renyi+fast-block-select", "angular"))


def test_the_healed_row_of_a_heal_aware_method_is_the_run_miprun_run_makes(text_file):
    """The default (mi-prun) judges healed sets: its healed row is selected for the healed model and
    healed — the same blocks and perplexity as ``miprun.prune`` with its default healing — with the
    plain row's selection kept beside it."""
    from miprun.evaluation.perplexity import perplexity

    common = dict(calib=str(text_file), num_samples=4, seq_len=16, heal_samples=12)
    report = compare(build_tiny("llama", layers=6, seed=3), prune=2, methods="mi-prun", ppl=(str(text_file),),
                     eval_seq_len=16, eval_max_windows=3, heal="linear", **common)
    rows = {r["method"]: r for r in report["rows"]}
    healed, plain = rows["mi-prun+heal"], rows["mi-prun"]
    assert healed["plain_blocks"] == plain["blocks"] and healed["selection"]["heal_preview"]["cuts_fitted"] > 0
    run = miprun.prune(build_tiny("llama", layers=6, seed=3), n=2, method="mi-prun", save=False, check=False, **common)
    assert healed["blocks"] == run.selection.blocks
    expected = perplexity(run.model, run.tokenizer, str(text_file), seq_len=16, max_windows=3).perplexity
    assert healed["perplexity"][str(text_file)] == pytest.approx(expected, rel=1e-9)


def test_compare_heal_adds_a_healed_row_beside_each_method_that_removes_blocks(text_file, tmp_path):
    from miprun.contracts import Selection
    from miprun.data.calibration import load_calibration
    from miprun.engine import preview_sequences
    from miprun.evaluation.perplexity import perplexity
    from miprun.healing import LinearHealer
    from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon

    loaded = build_tiny("llama", layers=6, seed=3)
    report = compare(loaded, prune=2, methods="shortgpt,laco", calib=str(text_file), num_samples=4, seq_len=16,
                     ppl=(str(text_file),), eval_seq_len=16, eval_max_windows=3, heal="linear", heal_samples=12)
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "shortgpt", "shortgpt+heal", "laco"]  # LaCo merges blocks: nothing to heal
    healed, plain = rows["shortgpt+heal"], rows["shortgpt"]
    assert healed["blocks"] == plain["blocks"] and healed["parameters"] == plain["parameters"]
    assert healed["cost"]["heal_seconds"] > 0 and healed["healing"]["cuts"]
    # the healed row is the healer's own result on the same selection, evaluated the same way
    calibration = load_calibration(str(text_file), loaded.tokenizer, num_samples=4, seq_len=16, seed=0)
    ids = load_calibration(str(text_file), loaded.tokenizer, num_samples=12, seq_len=16, seed=0, apart_from=calibration,
                           apart_count=preview_sequences(loaded.model, loaded.adapter, calibration.input_ids)).input_ids
    LinearHealer().heal(loaded.model, loaded.adapter, plain["blocks"], ids)
    RemoveBlocksSurgeon().apply(loaded.model, loaded.adapter, Selection(plain["blocks"]))
    expected = perplexity(loaded.model, loaded.tokenizer, str(text_file), seq_len=16, max_windows=3).perplexity
    assert healed["perplexity"][str(text_file)] == pytest.approx(expected, rel=1e-9)
    assert report["settings"]["heal"] == {"shortgpt": "linear", "laco": "none"} or report["settings"]["heal"]["shortgpt"] == "linear"
    with pytest.raises(MiprunError, match="unknown healer 'lineer'.*did you mean 'linear'"):
        compare(loaded, prune=2, methods="shortgpt", heal="lineer")


def test_compare_in_a_log_prints_start_and_done_lines_per_method(tiny_checkpoint, text_file):
    """stderr not a terminal (a log): one start and one done line per method, depth and healed row."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "miprun.cli.main", "compare", "--model", str(tiny_checkpoint),
                           "--calib", str(text_file), "--prune", "1", "--methods", "shortgpt,random",
                           "--num-samples", "4", "--seq-len", "16", "--heal-samples", "4"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("miprun: ")]
    for stage in ("dense", "shortgpt -1", "shortgpt+heal -1", "random -1", "random+heal -1"):
        assert f"miprun: {stage} started" in lines and any(line.startswith(f"miprun: {stage} done in ") for line in lines)
    assert lines.index("miprun: shortgpt -1 started") < lines.index("miprun: random -1 started")
