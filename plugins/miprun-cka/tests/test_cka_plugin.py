"""The plugin registers through its entry point and computes linear CKA correctly."""

from __future__ import annotations

import torch
from miprun_cka.scorer import _prepare, linear_cka

from miprun.contracts import BoundaryStates
from miprun.registry import build_registry


def test_registered_through_the_entry_point():
    registry = build_registry()
    entry = registry.get("scorer", "linear-cka")
    assert entry.provider == "cka"
    plugin = next(p for p in registry.plugins if p["plugin"] == "cka")
    assert plugin["package"] == "miprun-cka" and plugin["provides"] == {"scorer": ["linear-cka"]}


def test_cka_of_rotated_scaled_copy_is_one_and_of_noise_is_small():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert abs(linear_cka(_prepare(x), _prepare(3.0 * x @ q)) - 1.0) < 1e-9
    assert linear_cka(_prepare(x), _prepare(torch.randn(400, 8, generator=g))) < 0.1


def test_identity_block_is_the_most_redundant():
    g = torch.Generator().manual_seed(1)
    h0 = torch.randn(200, 6, generator=g)
    h1 = h0.clone()                                   # block 0: identity
    h2 = torch.tanh(h1 @ torch.randn(6, 6, generator=g))  # block 1: a real transformation
    scores = build_registry().create("scorer", "linear-cka").score(BoundaryStates([h0, h1, h2]))
    assert scores.value(0) > 0.999 and scores.importance(0) < scores.importance(1)


def test_compared_head_to_head_with_a_builtin_through_the_cli(tmp_path):
    """``miprun compare`` takes the plugin's scorer in a combination, one row per method."""
    import json
    import shutil
    import subprocess

    out = tmp_path / "compare.json"
    command = [shutil.which("miprun") or "miprun", "compare", "--prune", "2", "--methods", "shortgpt,linear-cka+greedy",
               "--eval", "wikitext2", "--eval-max-windows", "4", "--heal", "none", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense", "shortgpt", "linear-cka+greedy"]
    cka = rows[2]
    assert cka["strategies"]["scorer"] == {"name": "linear-cka", "options": {}, "provider": "cka", "why": "method 'linear-cka+greedy'"}
    assert len(cka["blocks"]) == 2 and cka["perplexity"]["wikitext2"] > rows[0]["perplexity"]["wikitext2"]
