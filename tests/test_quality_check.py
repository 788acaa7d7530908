"""The quality check every run ends with (miprun.quality): held-out windows, dense vs pruned."""

from __future__ import annotations

import math

import torch
from conftest import build_tiny, save_tiny
from typer.testing import CliRunner

import miprun
from miprun.cli.main import app
from miprun.probing import Prober
from miprun.quality import check_quality, dense_reference


def test_the_check_compares_dense_and_pruned_loss_on_the_same_windows():
    loaded = build_tiny("llama", layers=4, seed=51)
    windows = torch.randint(4, 80, (4, 16), generator=torch.Generator().manual_seed(52))
    reference = dense_reference(loaded.model, loaded.adapter, windows, {"name": "test"})
    assert reference.loss == Prober(loaded.model, loaded.adapter, windows).loss([])
    record = check_quality(loaded.model, loaded.adapter, reference, suggestion="try X")
    assert record["ratio"] == 1.0 and "warning" not in record
    with torch.no_grad():  # a confidently wrong head: far worse than dense
        loaded.model.get_output_embeddings().weight.mul_(200.0)
    ruined = check_quality(loaded.model, loaded.adapter, reference, suggestion="try X")
    assert ruined["loss_increase_nats"] > 1.0 and ruined["warning"].endswith("try X")
    assert math.isclose(ruined["ratio"], ruined["pruned_perplexity"] / ruined["dense_perplexity"])


def test_every_run_reports_the_check_and_warns_when_the_result_is_ruined(tmp_path, text_file, monkeypatch):
    result = miprun.prune(build_tiny("llama", layers=4, seed=53), n=1, calib=str(text_file), num_samples=4,
                          seq_len=16, heal_samples=4, output=tmp_path / "ok")
    quality = result.report["quality"]
    assert quality["windows"] == 8 and quality["seq_len"] == 16 and quality["data"]["seed"] == 1
    assert "check" in result.report["timings"] and "warning" not in quality
    card = (tmp_path / "ok" / "README.md").read_text()
    assert "## Quality check" in card and f"{quality['pruned_perplexity']:.2f}" in card
    assert "pypi.org" not in card  # miprun is not published: no link to a page that does not exist
    monkeypatch.setattr("miprun.quality.RUINED_NATS", -1.0)  # every result counts as ruined
    done = CliRunner().invoke(app, ["run", "--model", str(save_tiny(tmp_path / "tiny", seed=54)), "--calib", str(text_file),
                                    "--seq-len", "16", "--num-samples", "4", "--heal-samples", "4", "--prune", "1",
                                    "--method", "shortgpt", "--output", str(tmp_path / "bad")])
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "far worse than dense" in warnings[0] and "miprun's default" in warnings[0]
    assert "**Warning:**" in (tmp_path / "bad" / "README.md").read_text()

