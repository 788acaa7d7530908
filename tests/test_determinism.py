"""The same command twice gives the same selection and byte-identical weights; a report reruns its run."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
from conftest import build_tiny

from miprun.cli.main import main


def cli(*argv: str) -> int:
    """Run ``miprun`` in this process; its exit code."""
    saved = sys.argv
    sys.argv = ["miprun", *argv]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_dir(tmp_path):
    loaded = build_tiny("llama", layers=6, seed=11)
    loaded.model.save_pretrained(tmp_path / "tiny")
    loaded.tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_two_identical_runs_give_byte_identical_weights_and_a_report_reruns_them(tmp_path, tiny_dir, text_file):
    common = ["run", "--model", str(tiny_dir), "--calib", str(text_file), "--prune", "2", "--num-samples", "4",
              "--seq-len", "32"]
    assert cli(*common, "--output", str(tmp_path / "a")) == 0
    assert cli(*common, "--output", str(tmp_path / "b")) == 0
    first, second = (json.loads((tmp_path / d / "miprun_report.json").read_text()) for d in "ab")
    assert first["selected_blocks"] == second["selected_blocks"]
    assert sha256(tmp_path / "a" / "model.safetensors") == sha256(tmp_path / "b" / "model.safetensors")
    # the report records what reruns it: the same plan, options, data and seed
    assert first["rerun"]["scorer"] == "output-mi" and first["rerun"]["n"] == 2 and first["rerun"]["seed"] == 0
    assert cli("run", "--from-report", str(tmp_path / "a"), "--output", str(tmp_path / "c")) == 0
    third = json.loads((tmp_path / "c" / "miprun_report.json").read_text())
    assert third["selected_blocks"] == first["selected_blocks"] and third["rerun"] == first["rerun"]
    assert sha256(tmp_path / "c" / "model.safetensors") == sha256(tmp_path / "a" / "model.safetensors")
    assert {k: v["options"] for k, v in third["strategies"].items()} == {k: v["options"] for k, v in first["strategies"].items()}


def test_from_report_refuses_flags_that_would_change_the_run_and_files_that_are_no_report(tmp_path, capsys):
    assert cli("run", "--from-report", str(tmp_path / "nowhere"), "--prune", "3") == 2
    assert "drop --prune" in capsys.readouterr().err
    bad = tmp_path / "miprun_report.json"
    bad.write_text("{not json")
    assert cli("run", "--from-report", str(bad)) == 2
    assert "is not a miprun report" in capsys.readouterr().err
    bad.write_text("{}")
    assert cli("run", "--from-report", str(bad)) == 2
    assert "records no rerun section" in capsys.readouterr().err
