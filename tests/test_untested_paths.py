"""User-facing behaviour no test covered before: plan-resolution errors, races over several chunks
and more than two sets, layer-wise refusals of mismatched or incomplete checkpoints, and the
plain-text run table of a healed run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import save_tiny
from safetensors.torch import load_file, save_file

from miprun.errors import MiprunError
from miprun.plans import resolve_plan
from miprun.racing import race


@pytest.mark.parametrize("named, message", [
    (dict(method="shortgpt", selector="sleb"),
     "cannot run with the scorer 'block-influence' of method 'shortgpt'; drop --method"),
    (dict(method="mi-prun", selector="random"),
     "scorer 'output-mi' and estimator 'gaussian-channel' of method 'mi-prun'"),
    (dict(scorer="block-mi", selector="sleb"), "this run has no scorer; drop --scorer"),
    (dict(selector="laco", estimator="renyi"), "this run has no estimator; drop --estimator"),
    (dict(method="laco", heal="linear"), "healer 'linear' heals the remove-blocks surgeon's removal"),
])
def test_plan_errors_name_only_what_the_user_passed(named, message):
    heal = named.pop("heal", None)
    with pytest.raises(MiprunError) as error:
        resolve_plan(healer=heal, **named)
    assert message in str(error.value)
    if "method" in named and "drop --method" in message:
        assert "--scorer" not in str(error.value)  # never a flag the user did not pass


def test_a_race_among_three_sets_drops_them_one_chunk_at_a_time():
    """Three candidates over four chunks: the clearly worst goes after chunk 1, the close one races
    on, and the leader wins by the mean of what was seen."""
    per_sequence = {
        "a": [1.0, 1.02, 0.98, 1.01] * 4,
        "b": [0.99, 1.03, 0.95, 0.97] * 4,  # within noise of a on one chunk, behind it on more
        "c": [0.2, 0.25, 0.22, 0.21] * 4,
    }
    asked = []

    def values_on(chunk, alive):
        asked.append(tuple(alive))
        return {c: per_sequence[c][chunk * 4 : chunk * 4 + 4] for c in alive}

    winner, record = race(["c", "b", "a"], range(4), values_on)
    rows = {r["candidate"]: r for r in record["candidates"]}
    assert winner == "a" and rows["c"]["dropped_after_chunk"] == 1 and rows["a"]["dropped_after_chunk"] is None
    assert asked[0] == ("c", "b", "a") and asked[1] == ("b", "a")
    assert rows["b"]["dropped_after_chunk"] in (None, 2, 3, 4)
    assert rows["b"]["sequences"] == 4 * (rows["b"]["dropped_after_chunk"] or record["chunks_used"]) > 4
    assert rows["c"]["sequences"] == 4 and rows["a"]["mean"] > rows["b"]["mean"]


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny(tmp_path / "tiny", layers=3, seed=61)


def _edit_weights(path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "tensor names do not match"),
    (lambda t: t.pop("model.norm.weight"), "has no tensor for 'model.norm.weight'"),
    (lambda t: t.update({k.replace("model.layers", "decoder.blocks"): t.pop(k) for k in list(t) if "layers" in k}),
     "tensor names do not match"),
])
def test_layerwise_refuses_mismatched_or_incomplete_checkpoints(tiny_dir, text_file, tmp_path, edit, message):
    from typer.testing import CliRunner

    from miprun.cli.main import app

    _edit_weights(tiny_dir, edit)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_dir), "--layerwise", "--calib", str(text_file),
                                      "--seq-len", "16", "--output", str(out)])
    assert result.exit_code == 2 and message in result.stderr and not out.exists(), result.stderr


def test_the_plain_text_run_table_of_a_healed_run(tiny_dir, text_file, tmp_path):
    """stdout not a terminal: the summary lists the healer and why, the cut healed and where, the
    quality check, and the healing of a --heal none run."""
    common = ["--model", str(tiny_dir), "--calib", str(text_file), "--seq-len", "16", "--num-samples", "4",
              "--heal-samples", "4", "--prune", "1", "--method", "shortgpt"]
    healed = subprocess.run([sys.executable, "-m", "miprun.cli.main", "run", *common, "--output", str(tmp_path / "h")],
                            capture_output=True, text=True, timeout=600)
    assert healed.returncode == 0, healed.stderr[-2000:]
    text = healed.stdout
    assert "healer" in text and "linear  (block default)" in text
    assert "quality check" in text and "held-out" in text
    healing = json.loads((tmp_path / "h" / "miprun_report.json").read_text())["surgery"]["healing"]
    if healing["held_out"]["kept"] == "healed":  # the cut healed and where, and the healing check
        assert "mlp.down_proj refitted" in text and "healing check" in text
    else:  # 4 × 16 healing tokens may lose to plain removal on the check's windows: said in one line
        assert "not healed: healing made the result worse" in text and healing["undone"]["cuts"]
    plain = subprocess.run([sys.executable, "-m", "miprun.cli.main", "run", *common, "--heal", "none",
                            "--output", str(tmp_path / "p")], capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0 and "--heal none: plain removal" in plain.stdout
