"""lm-eval on an in-memory model, generation samples, and the :func:`evaluate` report."""

from __future__ import annotations

import json

import pytest
from test_eval_helpers import CORPUS, tiny_model, tiny_tokenizer

from miprun.evaluation import SpeedConfig, compare_reports, evaluate
from miprun.evaluation.generation import generate_samples, side_by_side
from miprun.evaluation.local_tasks import local_available
from miprun.evaluation.report import sections, to_markdown

needs_data = pytest.mark.skipif(not local_available("sst2"), reason="the shared data directory is not here")


@needs_data
def test_run_tasks_on_an_in_memory_model():
    from miprun.evaluation.lm_eval_bridge import run_tasks

    scores = run_tasks(tiny_model(), tiny_tokenizer(), "piqa,cb", limit=3, batch_size=2)
    assert list(scores) == ["piqa", "cb"]
    assert scores["piqa"]["n"] == 3 and scores["piqa"]["n_total"] == 1838
    assert {"acc", "acc_stderr", "acc_norm"} <= set(scores["piqa"])
    assert {"acc", "f1"} <= set(scores["cb"]) and "acc_norm" not in scores["cb"]
    assert scores["cb"]["source"].startswith("local:")
    for entry in scores.values():
        assert 0.0 <= entry["acc"] <= 1.0


@needs_data
def test_lm_eval_wikitext_word_perplexity_on_local_pages():
    from miprun.evaluation.lm_eval_bridge import lm_eval_wikitext

    out = lm_eval_wikitext(tiny_model(), tiny_tokenizer(), max_length=128, limit=1)
    assert out["n"] == 1 and out["n_total"] == 62 and out["max_length"] == 128
    assert out["word_perplexity"] > out["byte_perplexity"] > 1.0


def test_generation_is_greedy_and_repeatable():
    model, tok = tiny_model(), tiny_tokenizer()
    first = generate_samples(model, tok, ["The quick brown"], max_new_tokens=5)
    again = generate_samples(model, tok, ["The quick brown"], max_new_tokens=5)
    assert first == again and first[0]["prompt"] == "The quick brown"
    rows = side_by_side(first, [{"prompt": "The quick brown", "output": "x"}])
    assert rows == [{"prompt": "The quick brown", "dense": first[0]["output"], "pruned": "x"}]


@needs_data
def test_evaluate_report_is_json_and_renders(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(CORPUS * 4), encoding="utf-8")
    speed = SpeedConfig(prefill_len=8, decode_batch=2, decode_prompt=4, decode_tokens=2, repeats=1)
    model, tok = tiny_model(layers=3), tiny_tokenizer()
    report = evaluate(
        model, tok, ppl=[str(text)], tasks="sst2", limit=2, latency=True, generate=True, progress=False,
        seq_len=32, speed_config=speed, prompts=["The quick"], max_new_tokens=3,
    )
    json.dumps(report, allow_nan=False)
    assert report["perplexity"][str(text)]["seq_len"] == 32
    assert report["tasks"]["sst2"]["n"] == 2 and report["task_average"] == report["tasks"]["sst2"]["acc"]
    assert report["size"]["parameters"]["num_blocks"] == 3
    assert report["speed"]["prefill"]["tokens"] == 8
    assert report["generation"][0]["prompt"] == "The quick"
    titles = [title for title, _, _ in sections(report)]
    assert titles[0] == "Perplexity (miprun protocol)" and "Size" in titles
    assert "| sst2 |" in to_markdown(report)

    dense = evaluate(tiny_model(layers=4), tok, ppl=(), latency=True, generate=True, speed_config=speed, prompts=["The quick"], max_new_tokens=3)
    comparison = compare_reports(dense, report)
    assert comparison["ideal_speedup"] == pytest.approx(4 / 3)
    assert comparison["generation"][0]["prompt"] == "The quick"


@pytest.mark.integration
@needs_data
def test_smollm2_paper_tasks_quick(smollm2):
    """The default model on the ten paper tasks, 4 documents each (about a minute on a CPU)."""
    from miprun.evaluation.lm_eval_bridge import PAPER_TASKS, run_tasks

    scores = run_tasks(smollm2.model, smollm2.tokenizer, "paper", limit=4, batch_size=4)
    assert list(scores) == list(PAPER_TASKS)
    assert all(s["n"] == 4 for s in scores.values())
    assert all(s["source"].startswith("local:") for s in scores.values())


@needs_data
def test_miprun_eval_matches_stock_lm_eval_on_a_pruned_checkpoint(tmp_path, text_file):
    """The numbers of ``miprun eval`` are lm-eval's: the saved pruned checkpoint scored by lm-eval's
    own ``hf`` model (loading the directory itself) on the same local task config gives the same."""

    from conftest import build_tiny
    from lm_eval import simple_evaluate
    from typer.testing import CliRunner

    import miprun
    from miprun.cli.main import app
    from miprun.evaluation.lm_eval_bridge import build_tasks, local_task_manager, quiet_lm_eval

    out = tmp_path / "pruned"
    miprun.prune(build_tiny("llama", layers=4, seed=3), n=1, calib=str(text_file), num_samples=2, seq_len=16,
                 method="shortgpt", output=out)
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(out), "--ppl", "none", "--tasks", "rte", "--limit", "12",
                                      "--batch-size", "4", "--dtype", "float32", "--json", str(report)])
    assert result.exit_code == 0, result.output
    ours = json.loads(report.read_text())["tasks"]["rte"]
    with quiet_lm_eval():
        stock = simple_evaluate(model="hf", model_args=f"pretrained={out},dtype=float32", tasks=list(build_tasks(["rte"]).values()),
                                limit=12, batch_size=4, task_manager=local_task_manager(), bootstrap_iters=0,
                                log_samples=False, device="cpu")
    assert stock["results"]["rte"]["acc,none"] == pytest.approx(ours["acc"], abs=1e-12)
    assert ours["n"] == 12
