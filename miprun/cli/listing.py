"""``miprun list`` and ``miprun plugins``: what strategies and plugins are installed."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from miprun.cli.console import out, print_json
from miprun.registry import get_registry


def list_strategies(
    kind: Annotated[Optional[str], typer.Argument(help="collector, estimator, scorer, selector, surgeon or architecture")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List strategies by kind with one-line descriptions and declared capabilities, and the
    architectures miprun can prune (imports no strategy code)."""
    registry = get_registry()
    if kind != "architecture":
        kinds = [kind] if kind else list(registry.entries)
        rows = [
            {"kind": k, "name": e.name, "description": e.description, "provider": e.provider,
             "capabilities": e.capabilities.declared()}
            for k in kinds for e in (registry.get(k, n) for n in registry.names(k))
        ]
    else:
        rows = []
    if kind in (None, "architecture"):
        rows += [{"kind": "architecture", "name": a.model_type, "description": a.description, "provider": a.provider,
                  "capabilities": {}} for a in sorted(registry.architectures.values(), key=lambda a: a.model_type)]
    if json_output:
        print_json(rows)
        return
    table = Table("kind", "name", "description", "provider")
    for row in rows:
        table.add_row(row["kind"], row["name"], row["description"], row["provider"])
    out.print(table)


def list_plugins(
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List installed plugins: package, version and the strategies each provides."""
    plugins = get_registry().plugins
    if json_output:
        print_json(plugins)
        return
    table = Table("plugin", "package", "version", "provides")
    for plugin in plugins:
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in plugin["provides"].items())
        table.add_row(plugin["plugin"], plugin["package"], plugin["version"], provides)
    out.print(table)
