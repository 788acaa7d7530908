"""The package's layering: strategies depend on contracts and helpers only, and no module imports
another that (directly or through others) imports it back. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "miprun"
STRATEGY_PACKAGES = ("collectors", "estimators", "scorers", "selectors", "surgeons")
ORCHESTRATION = ("miprun.pipeline", "miprun.compare", "miprun.cli", "miprun.engine", "miprun.plans",
                 "miprun.methods", "miprun.registry", "miprun.builtins", "miprun.granularity")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The miprun modules ``path`` imports anywhere in its code (``from miprun.x import y`` names
    module ``miprun.x.y`` when that is a module, else ``miprun.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("miprun"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("miprun") and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    # the package itself is the public façade (``miprun.prune`` imports the run lazily); every
    # submodule imports it implicitly, so edges into and out of it say nothing about layering
    return {name: imports(path, set(known)) - {"miprun"} for name, path in known.items() if name != "miprun"}


def test_strategy_modules_import_no_orchestration():
    offenders = {
        name: sorted(d for d in deps if d.startswith(ORCHESTRATION))
        for name, deps in graph().items()
        if name.startswith(tuple(f"miprun.{p}" for p in STRATEGY_PACKAGES))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_strategy_modules_import_no_other_strategy():
    strategy_modules = {name for name in graph() if name.startswith(tuple(f"miprun.{p}." for p in STRATEGY_PACKAGES))}
    helpers = {"miprun.selectors.refinement", "miprun.scorers.boundary", "miprun.scorers.weights",
               "miprun.estimators.preprocess", "miprun.estimators.kernels", "miprun.estimators.neuron_mi",
               "miprun.collectors.hidden_states", "miprun.selectors.span_table"}
    offenders = {}
    for name, deps in graph().items():
        if name in strategy_modules:
            other = sorted(d for d in deps if d in strategy_modules and d not in helpers and d != name
                           and d.split(".")[1] != name.split(".")[1])
            if other:
                offenders[name] = other
    assert offenders == {}


def test_no_import_cycle_inside_the_package():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_cli_starts_without_importing_torch():
    """``miprun --help`` (and every refusal before a model is loaded) answers without paying for
    torch's import (about a second here): the CLI's modules import the heavy ones where they run."""
    import subprocess
    import sys

    code = "import sys, miprun.cli.main; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
