"""The plugin host: built-ins through hooks, duplicates, did-you-mean, options, lazy listing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from miprun import hookimpl
from miprun.errors import MiprunError
from miprun.hookspecs import KINDS
from miprun.registry import build_registry


def test_every_kind_has_builtins_registered_through_hooks():
    registry = build_registry()
    for kind in KINDS:
        assert registry.names(kind), kind
        assert all(registry.get(kind, n).provider == "miprun.builtins" for n in registry.names(kind)
                   if n in {"hidden-states", "renyi", "block-mi", "greedy", "remove-blocks"})


def test_builtin_factories_import_and_follow_protocols():
    from miprun import strategies

    protocols = {"collector": strategies.Collector, "estimator": strategies.Estimator,
                 "scorer": strategies.Scorer, "selector": strategies.Selector, "surgeon": strategies.Surgeon}
    registry = build_registry()
    for kind, protocol in protocols.items():
        for name in registry.names(kind):
            if registry.get(kind, name).provider != "miprun.builtins":
                continue
            strategy = registry.create(kind, name)
            assert isinstance(strategy, protocol), (kind, name)
            assert strategy.name == name


def test_unknown_name_suggests_the_closest():
    registry = build_registry()
    with pytest.raises(MiprunError, match=r"unknown estimator 'reny'.*did you mean 'renyi'.*valid choices: .*ksg.*renyi"):
        registry.get("estimator", "reny")


def test_duplicate_name_names_both_providers():
    class Clash:
        @hookimpl
        def miprun_register_estimators(self, register):
            register("renyi", lambda: None, description="a second renyi")

    with pytest.raises(MiprunError, match=r"registered twice: by miprun.builtins and by .*Clash|registered twice"):
        build_registry(extra_plugins=(Clash(),))


def test_third_party_plugin_object_registers_and_creates():
    class Scaled:
        def __init__(self, *, factor: float = 1.0):
            self.factor = factor

    class Plugin:
        @hookimpl
        def miprun_register_scorers(self, register):
            register("scaled", Scaled, description="test scorer")

    registry = build_registry(extra_plugins=(Plugin(),))
    assert registry.create("scorer", "scaled", factor=2.0).factor == 2.0
    with pytest.raises(MiprunError, match=r"no option 'factr' \(did you mean 'factor'\?\)"):
        registry.create("scorer", "scaled", factr=2.0)


def test_listing_imports_no_torch():
    code = "import sys; from miprun.registry import get_registry; r = get_registry(); r.names('estimator'); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
