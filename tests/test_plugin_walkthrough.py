"""docs/plugins.md walks through a complete plugin; this runs its code as written.

The two files of ``miprun-demo`` are extracted from the page, imported, registered through the
hooks like an installed plugin, and every one of its ten strategies prunes a tiny model.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny
from transformers import AutoModelForCausalLM

import miprun
import miprun.registry
from miprun.compare import compare
from miprun.registry import build_registry

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The plugin of docs/plugins.md, registered as the process-wide registry's extra plugin."""
    files = re.findall(r"```python\n# (miprun_demo/\w+\.py)\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert [name for name, _ in files] == ["miprun_demo/plugin.py", "miprun_demo/strategies.py"]
    for name, code in files:
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(code, encoding="utf-8")
    (tmp_path / "miprun_demo" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import miprun_demo.plugin as plugin

    registry = build_registry(extra_plugins=(plugin,))
    monkeypatch.setattr(miprun.registry, "_REGISTRY", registry)
    yield registry
    for module in [m for m in sys.modules if m.startswith("miprun_demo")]:
        del sys.modules[module]


def test_the_demo_registers_ten_strategies_with_their_capabilities(demo):
    provided = next(p for p in demo.plugins if p["plugin"] == "miprun_demo.plugin")["provides"]
    assert sum(len(names) for names in provided.values()) == 10
    assert demo.get("selector", "activation-variance").capabilities.reads_states
    assert demo.get("estimator", "abs-spearman").capabilities.pairwise


def test_block_strategies_prune_and_save_a_loadable_checkpoint(demo, text_file, tmp_path):
    out = tmp_path / "out"
    result = miprun.prune(build_tiny("llama", layers=6), n=2, calib=str(text_file), num_samples=8, seq_len=16,
                          scorer="relative-update", surgeon="drop-blocks", output=out)
    strategies = result.report["strategies"]
    assert strategies["selector"] == {"name": "protect-ends", "options": {"protect": 1}, "provider": "miprun_demo.plugin",
                                      "why": "default of scorer 'relative-update'"}
    assert not {0, 5} & set(result.selection.blocks)
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
    # the plugin estimator under the built-in MI scorer and the paper's selector, on the plugin collector
    mi = miprun.prune(build_tiny("llama", layers=6), n=2, calib=str(text_file), num_samples=8, seq_len=16,
                      scorer="block-mi", estimator="correlation", collector="last-token", save=False)
    assert mi.report["collection"] == {"tokens": 8, "position": "last"}
    assert mi.report["strategies"]["selector"]["name"] == "fast-block-select" and len(mi.selection.blocks) == 2


def test_neuron_strategies_prune_every_layer_to_the_same_width(demo, text_file):
    def run(**names):
        return miprun.prune(build_tiny("llama", layers=2), granularity="neuron", n=8, calib=str(text_file),
                            num_samples=4, seq_len=16, save=False, **names)

    pairwise = run(collector="ffn-last-token", estimator="abs-spearman", selector="mi-threshold")
    assert pairwise.report["strategies"]["scorer"]["name"] == "neuron-mi"
    assert pairwise.report["neuron_scores"]["metric"] == "abs-spearman"
    assert all(len(kept) == 56 for kept in pairwise.selection.keep.values())
    cosine = run(scorer="neuron-cosine")
    assert cosine.report["strategies"]["selector"]["name"] == "mi-threshold"
    zeroed = run(selector="activation-variance", surgeon="zero-neurons")
    assert zeroed.report["surgery"] == {"zeroed_neurons": 16} and "scorer" not in zeroed.report["strategies"]
    down = zeroed.adapter.ffn_modules(0)[1].weight
    removed = sorted(set(range(64)) - set(zeroed.selection.keep[0]))
    assert torch.count_nonzero(down[:, removed]) == 0 and torch.count_nonzero(down[:, zeroed.selection.keep[0]]) > 0


def test_plugin_strategies_are_compared_head_to_head(demo, text_file):
    report = compare(build_tiny("llama", layers=6), prune=2, methods="shortgpt,relative-update+protect-ends",
                     calib=str(text_file), num_samples=4, seq_len=16, ppl=())
    rows = {r["method"]: r for r in report["rows"][1:]}
    assert rows["relative-update+protect-ends"]["strategies"]["scorer"]["provider"] == "miprun_demo.plugin"
    assert len(rows["relative-update+protect-ends"]["blocks"]) == 2
