"""The plugin host: loads built-in and third-party plugins and resolves strategy names.

Built-in strategies live in :mod:`miprun.builtins`, an ordinary plugin registered through the same
hooks as third-party packages, which are discovered through the ``miprun`` entry-point group. Set
``MIPRUN_DISABLE_PLUGIN_AUTOLOAD=1`` to load built-ins only.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from miprun import PROJECT, hookspecs
from miprun.errors import MiprunError, did_you_mean

BUILTIN_PLUGINS = ("miprun.builtins",)


@dataclass
class Entry:
    """One registered strategy: its kind, name, factory and the plugin that provided it."""

    kind: str
    name: str
    factory: Callable[..., Any] | str
    description: str
    provider: str

    def load_factory(self) -> Callable[..., Any]:
        """Return the factory callable, importing it if it was registered as ``"module:attr"``."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise MiprunError(
                f"{self.kind} '{self.name}' from {self.provider} cannot be imported ({exc}); "
                f"reinstall the plugin that provides it"
            ) from exc
        return obj

    def _keyword_parameters(self) -> list[inspect.Parameter]:
        try:
            params = inspect.signature(self.load_factory()).parameters.values()
        except (TypeError, ValueError):
            return []
        return [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def options(self) -> list[str]:
        """Names of the keyword options the factory accepts."""
        return [p.name for p in self._keyword_parameters()]

    def defaults(self) -> dict[str, Any]:
        """The factory's keyword options that have defaults, with those defaults."""
        return {p.name: p.default for p in self._keyword_parameters() if p.default is not p.empty}

    def create(self, **options: Any) -> Any:
        """Build the strategy with ``options``; unknown options are a :class:`MiprunError`."""
        factory = self.load_factory()
        known = self.options()
        try:
            signature = inspect.signature(factory)
            accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        except (TypeError, ValueError):
            accepts_any = True
        for key in options:
            if not accepts_any and key not in known:
                raise MiprunError(
                    f"{self.kind} '{self.name}' has no option '{key}'{did_you_mean(key, known)}; "
                    f"valid options: {', '.join(known) or 'none'}"
                )
        strategy = factory(**options)
        strategy.name = self.name
        return strategy


@dataclass
class Registry:
    """All strategies of every kind, with the plugins that provided them."""

    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {kind: {} for kind in hookspecs.KINDS}
    )
    plugins: list[dict[str, Any]] = field(default_factory=list)

    def add(self, entry: Entry) -> None:
        """Add ``entry``; a name already taken in its kind is an error naming both providers."""
        taken = self.entries[entry.kind].get(entry.name)
        if taken is not None:
            raise MiprunError(
                f"{entry.kind} name '{entry.name}' is registered twice: by {taken.provider} and by "
                f"{entry.provider}; uninstall one of the two plugins"
            )
        self.entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        """Sorted strategy names of ``kind``."""
        return sorted(self._kind(kind))

    def get(self, kind: str, name: str) -> Entry:
        """Return the entry ``name`` of ``kind``; an unknown name is an error with a did-you-mean."""
        entries = self._kind(kind)
        if name not in entries:
            choices = sorted(entries)
            raise MiprunError(
                f"unknown {kind} '{name}'{did_you_mean(name, choices)}; "
                f"valid choices: {', '.join(choices)}"
            )
        return entries[name]

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """Build the strategy ``name`` of ``kind`` with ``options``."""
        return self.get(kind, name).create(**options)

    def _kind(self, kind: str) -> dict[str, Entry]:
        if kind not in self.entries:
            raise MiprunError(
                f"unknown strategy kind '{kind}'{did_you_mean(kind, list(self.entries))}; "
                f"valid kinds: {', '.join(self.entries)}"
            )
        return self.entries[kind]


def _plugin_package(manager: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    for registered, dist in manager.list_plugin_distinfo():
        if registered is plugin:
            return dist.metadata["name"], dist.version
    from miprun import __version__

    return PROJECT, __version__


def build_registry(extra_plugins: tuple[object, ...] = ()) -> Registry:
    """Load built-ins, entry-point plugins and ``extra_plugins``; collect everything they register."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if not os.environ.get("MIPRUN_DISABLE_PLUGIN_AUTOLOAD"):
        manager.load_setuptools_entrypoints(PROJECT)
    for plugin in extra_plugins:
        manager.register(plugin)
    manager.check_pending()

    registry = Registry()
    provided: dict[str, dict[str, list[str]]] = {}
    for kind, hook_name in hookspecs.KINDS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            provider = impl.plugin_name

            def register(name, factory, *, description="", _kind=kind, _provider=provider):
                registry.add(Entry(_kind, name, factory, description, _provider))
                provided.setdefault(_provider, {}).setdefault(_kind, []).append(name)

            impl.function(register)
    for name, plugin in manager.list_name_plugin():
        package, version = _plugin_package(manager, plugin)
        registry.plugins.append(
            {"plugin": name, "package": package, "version": version,
             "provides": {k: sorted(v) for k, v in provided.get(name, {}).items()}}
        )
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """Return the process-wide registry, loading plugins on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY
