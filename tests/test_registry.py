"""The plugin host: built-ins through hooks, declared capabilities, protocols, duplicates,
did-you-mean, options, architectures, lazy listing."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

from miprun import hookimpl
from miprun.contracts import (
    ArchitectureSpec,
    BoundaryStates,
    Estimator,
    Healer,
    PairwiseEstimator,
    RunContext,
    Selection,
)
from miprun.errors import MiprunError
from miprun.hookspecs import KINDS
from miprun.registry import build_registry


def test_every_builtin_is_registered_through_the_hooks_by_miprun_builtins():
    registry = build_registry()
    for kind in KINDS:
        assert registry.names(kind), kind
        assert {registry.get(kind, n).provider for n in registry.names(kind)} == {"miprun.builtins"}
    assert {a.provider for a in registry.architectures.values()} == {"miprun.builtins"}
    assert {"llama", "gpt2", "qwen2"} <= set(registry.architectures)


def _call(method, *args, **kwargs) -> None:
    """Fail unless ``method`` accepts the call the engine makes."""
    inspect.signature(method).bind(*args, **kwargs)


REQUIRED_OPTIONS = {("selector", "given"): {"blocks": "0"}}
"""Built-ins that cannot be built without an option (the run names it: -o selector.blocks=...)."""


def test_builtins_accept_the_engines_calls_and_declare_coherent_partners():
    registry = build_registry()
    for kind in KINDS:
        for name in registry.names(kind):
            entry = registry.get(kind, name)
            strategy = entry.create(**REQUIRED_OPTIONS.get((kind, name), {}))
            caps = entry.capabilities
            if kind == "collector":
                _call(strategy.collect, "model", "adapter", "ids", progress=None)
            elif kind == "estimator":
                protocol = PairwiseEstimator if caps.pairwise else Estimator
                assert isinstance(strategy, protocol), (name, protocol)
            elif kind == "scorer":
                _call(strategy.score, None, None, context=None)
            elif kind == "selector":
                _call(strategy.select, None, 2, context=None)
            elif kind == "healer":
                assert isinstance(strategy, Healer), name
                _call(strategy.heal, "model", "adapter", [0], "ids")
                assert set(caps.heals) <= set(registry.names("surgeon")) and caps.heals, name
            else:
                _call(strategy.apply, "model", "adapter", Selection([0]))
            partners = {"scorer": caps.default_scorer, "selector": caps.default_selector,
                        "estimator": caps.default_estimator, "surgeon": caps.default_surgeon}
            for partner_kind, partner in partners.items():
                if partner is not None:
                    other = registry.get(partner_kind, partner)
                    assert set(caps.granularity) <= set(other.capabilities.granularity), (name, partner)
            if kind == "scorer" and caps.needs_estimator:
                assert caps.default_estimator, name
                assert registry.get("estimator", caps.default_estimator).capabilities.pairwise == caps.pairwise


def test_a_block_scorer_protocol_call_really_scores():
    registry = build_registry()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    states = BoundaryStates([x, x + 0.01 * torch.randn(64, 8, generator=g), 3 * torch.randn(64, 8, generator=g)])
    for name in ("block-influence", "block-mi"):
        scores = registry.create("scorer", name).score(states, registry.create("estimator", "gaussian-channel"),
                                                       context=RunContext(None, None, None))
        assert scores.importance(0) < scores.importance(1), name


def test_unknown_name_suggests_the_closest():
    registry = build_registry()
    with pytest.raises(MiprunError, match=r"unknown estimator 'reny'.*did you mean 'renyi'.*valid choices: .*ksg.*renyi"):
        registry.get("estimator", "reny")


def test_duplicate_name_names_both_providers():
    class Clash:
        @hookimpl
        def miprun_register_estimators(self, register):
            register("renyi", lambda: None, description="a second renyi")

    with pytest.raises(MiprunError, match=r"^estimator name 'renyi' is registered twice: by miprun.builtins and by Clash; "):
        build_registry(extra_plugins=(Clash(),))


def test_unknown_capability_names_the_strategy_and_its_plugin():
    class Typo:
        @hookimpl
        def miprun_register_scorers(self, register):
            register("typo", lambda: None, reads_state=True)

    with pytest.raises(MiprunError, match=r"scorer 'typo' from Typo declares unknown capability 'reads_state' "
                                          r"\(did you mean 'reads_states'\?\)"):
        build_registry(extra_plugins=(Typo(),))


def test_third_party_plugin_object_registers_creates_and_declares():
    class Scaled:
        def __init__(self, *, factor: float = 1.0):
            self.factor = factor

    class Plugin:
        @hookimpl
        def miprun_register_scorers(self, register):
            register("scaled", Scaled, description="test scorer", reads_states=True, default_selector="best-span")

    registry = build_registry(extra_plugins=(Plugin(),))
    entry = registry.get("scorer", "scaled")
    assert entry.provider == "Plugin" and entry.capabilities.default_selector == "best-span"
    assert registry.create("scorer", "scaled", factor=2.0).factor == 2.0
    with pytest.raises(MiprunError, match=r"no option 'factr' \(did you mean 'factor'\?\)"):
        registry.create("scorer", "scaled", factr=2.0)
    plugin = next(p for p in registry.plugins if p["plugin"] == "Plugin")
    assert plugin["provides"] == {"scorer": ["scaled"]}


def test_a_plugin_adds_an_architecture_and_a_clash_names_both():
    spec = ArchitectureSpec(blocks=("model.layers",))

    class Arch:
        @hookimpl
        def miprun_register_architectures(self, register):
            register("my-llama", spec, description="a renamed llama")

    registry = build_registry(extra_plugins=(Arch(),))
    assert registry.architecture("my-llama") is spec and registry.architectures["my-llama"].provider == "Arch"
    with pytest.raises(MiprunError, match=r"unsupported architecture 'nope'; miprun supports .*my-llama.*miprun_register_architectures"):
        registry.architecture("nope")

    class Clash:
        @hookimpl
        def miprun_register_architectures(self, register):
            register("llama", spec)

    with pytest.raises(MiprunError, match="architecture 'llama' is registered twice: by miprun.builtins and by Clash"):
        build_registry(extra_plugins=(Clash(),))


def test_listing_imports_no_torch():
    code = ("import sys; from miprun.registry import get_registry; r = get_registry(); r.names('estimator'); "
            "r.get('scorer', 'block-mi').capabilities; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
