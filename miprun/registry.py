"""The plugin host: loads built-in and third-party plugins and resolves strategy names.

Built-in strategies live in :mod:`miprun.builtins`, an ordinary plugin registered through the same
hooks as third-party packages, which are discovered through the ``miprun`` entry-point group. Set
``MIPRUN_DISABLE_PLUGIN_AUTOLOAD=1`` to load built-ins only. Every hook implementation is called
through pluggy's hook caller, one plugin at a time, so that each registration is attributed to the
plugin that made it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from miprun import PROJECT, hookspecs
from miprun.contracts import ArchitectureSpec, Capabilities
from miprun.errors import MiprunError, did_you_mean
from miprun.options import convert_option

BUILTIN_PLUGINS = ("miprun.builtins",)


@dataclass
class Entry:
    """One registered strategy: its kind, name, factory, declared capabilities and provider."""

    kind: str
    name: str
    factory: Callable[..., Any] | str
    description: str
    provider: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    _parameters: list[inspect.Parameter] | None = field(default=None, repr=False)

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

    def parameters(self) -> list[inspect.Parameter]:
        """The factory's keyword options (read from its signature once)."""
        if self._parameters is None:
            try:
                params = inspect.signature(self.load_factory()).parameters.values()
            except (TypeError, ValueError):
                params = []
            self._parameters = [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_KEYWORD)]
        return self._parameters

    def options(self) -> list[str]:
        """Names of the keyword options the factory accepts."""
        return [p.name for p in self.parameters() if p.kind is not p.VAR_KEYWORD]

    def defaults(self) -> dict[str, Any]:
        """The factory's keyword options that have defaults, with those defaults."""
        return {p.name: p.default for p in self.parameters() if p.kind is not p.VAR_KEYWORD and p.default is not p.empty}

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` converted to the types the factory's signature declares; an option the
        factory does not take (with a did-you-mean), one it requires and was not given, or a value
        of the wrong type is a :class:`MiprunError` — before any model is loaded."""
        missing = [p.name for p in self.parameters() if p.default is p.empty and p.kind is not p.VAR_KEYWORD
                   and p.name not in options]
        if missing:
            raise MiprunError(f"{self.kind} '{self.name}' needs option {', '.join(missing)}: "
                              f"pass -o {self.kind}.{missing[0]}=VALUE")
        if not any(p.kind is p.VAR_KEYWORD for p in self.parameters()):
            known = self.options()
            for key in options:
                if key not in known:
                    raise MiprunError(
                        f"{self.kind} '{self.name}' has no option '{key}'{did_you_mean(key, known)}; "
                        f"valid options: {', '.join(known) or 'none'}"
                    )
        hints = self._type_hints()
        owner = f"{self.kind} '{self.name}'"
        return {key: convert_option(owner, key, value, hints[key]) if key in hints else value
                for key, value in options.items()}

    def _type_hints(self) -> dict[str, Any]:
        """The factory's resolved annotations (empty when they cannot be resolved)."""
        factory = self.load_factory()
        target = factory.__init__ if inspect.isclass(factory) else factory
        try:
            return typing.get_type_hints(target)
        except Exception:  # noqa: BLE001 - an unresolvable annotation only skips the conversion
            return {}

    def create(self, **options: Any) -> Any:
        """Build the strategy with ``options`` (checked and converted by :meth:`check_options`).
        A factory that still rejects a value with ``TypeError``/``ValueError`` becomes one
        :class:`MiprunError` naming the strategy and its options."""
        options = self.check_options(options)
        try:
            return self.load_factory()(**options)
        except (TypeError, ValueError) as exc:
            given = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"
            raise MiprunError(f"{self.kind} '{self.name}' rejected its options ({given}): {exc}") from exc

    def works_at(self, granularity: str) -> bool:
        """Whether the strategy declared ``granularity``."""
        return granularity in self.capabilities.granularity


@dataclass
class ArchitectureEntry:
    """One registered architecture: ``config.model_type``, its layout and its provider."""

    model_type: str
    spec: ArchitectureSpec
    description: str
    provider: str


@dataclass
class Registry:
    """All strategies of every kind and all architectures, with the plugins that provided them."""

    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {kind: {} for kind in hookspecs.KINDS}
    )
    architectures: dict[str, ArchitectureEntry] = field(default_factory=dict)
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

    def add_architecture(self, entry: ArchitectureEntry) -> None:
        """Add ``entry``; a model type already taken is an error naming both providers."""
        taken = self.architectures.get(entry.model_type)
        if taken is not None:
            raise MiprunError(
                f"architecture '{entry.model_type}' is registered twice: by {taken.provider} and by "
                f"{entry.provider}; uninstall one of the two plugins"
            )
        if not isinstance(entry.spec, ArchitectureSpec):
            raise MiprunError(f"architecture '{entry.model_type}' from {entry.provider} is not an ArchitectureSpec")
        self.architectures[entry.model_type] = entry

    def names(self, kind: str, granularity: str | None = None) -> list[str]:
        """Sorted strategy names of ``kind`` (only those that work at ``granularity`` when given)."""
        return sorted(n for n, e in self._kind(kind).items() if granularity is None or e.works_at(granularity))

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

    def architecture(self, model_type: str | None) -> ArchitectureSpec:
        """The layout registered for ``model_type``; an unknown one is an error naming the
        supported types and how to add one."""
        entry = self.architectures.get(model_type) if model_type is not None else None
        if entry is None:
            known = sorted(self.architectures)
            raise MiprunError(
                f"unsupported architecture '{model_type}'; miprun "
                f"supports {', '.join(known)}; a plugin adds one through the miprun_register_architectures "
                f"hook (docs/plugins.md)"
            )
        return entry.spec

    def _kind(self, kind: str) -> dict[str, Entry]:
        if kind not in self.entries:
            raise MiprunError(
                f"unknown strategy kind '{kind}'{did_you_mean(kind, list(self.entries))}; "
                f"valid kinds: {', '.join(self.entries)}"
            )
        return self.entries[kind]


def _plugin_package(packages: dict[str, tuple[str, str]], name: str) -> tuple[str, str]:
    if name in packages:
        return packages[name]
    from miprun import __version__

    return PROJECT, __version__


def _load_entry_points(manager: pluggy.PluginManager, packages: dict[str, tuple[str, str]],
                       broken: list[dict[str, Any]]) -> None:
    """Register every plugin of the ``miprun`` entry-point group. One that fails to import is
    skipped with one warning line naming it and its package (and recorded in ``broken``), so a
    broken third-party package never takes the other plugins, or miprun, down with it."""
    import sys
    from importlib.metadata import entry_points

    for point in entry_points(group=PROJECT):
        dist = getattr(point, "dist", None)
        package = (dist.metadata["name"], dist.version) if dist is not None else (point.value, "?")
        if manager.has_plugin(point.name) or manager.is_blocked(point.name):
            continue
        try:
            plugin = point.load()
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported, not raised
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            broken.append({"plugin": point.name, "package": package[0], "version": package[1], "error": reason})
            sys.stderr.write(f"miprun: warning: plugin '{point.name}' from package {package[0]} {package[1]} failed to "
                             f"load ({reason}); it is skipped — reinstall or uninstall {package[0]}\n")
            continue
        manager.register(plugin, name=point.name)
        packages[point.name] = package


def _plugin_manager(extra_plugins: tuple[object, ...], packages: dict[str, tuple[str, str]],
                    broken: list[dict[str, Any]]) -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if not os.environ.get("MIPRUN_DISABLE_PLUGIN_AUTOLOAD"):
        _load_entry_points(manager, packages, broken)
    for plugin in extra_plugins:  # named for error messages: a module's or class's name, else its class's
        manager.register(plugin, name=getattr(plugin, "__name__", type(plugin).__name__))
    manager.check_pending()
    return manager


def _call_each(manager: pluggy.PluginManager, hook_name: str, make_register: Callable[[str], Callable[..., None]]) -> None:
    """Call ``hook_name`` through pluggy for one plugin at a time, each with its own ``register``."""
    plugins = manager.list_name_plugin()
    for name, plugin in plugins:
        caller = manager.subset_hook_caller(hook_name, remove_plugins=[p for n, p in plugins if n != name])
        if caller.get_hookimpls():
            caller(register=make_register(name))


def build_registry(extra_plugins: tuple[object, ...] = ()) -> Registry:
    """Load built-ins, entry-point plugins and ``extra_plugins``; collect everything they register."""
    packages: dict[str, tuple[str, str]] = {}
    broken: list[dict[str, Any]] = []
    manager = _plugin_manager(extra_plugins, packages, broken)
    registry = Registry()
    provided: dict[str, dict[str, list[str]]] = {}

    for kind, hook_name in hookspecs.KINDS.items():
        def strategy_register(provider: str, kind: str = kind) -> Callable[..., None]:
            def register(name: str, factory: Callable[..., Any] | str, *, description: str = "", **capabilities: Any) -> None:
                declared = Capabilities.declare(kind, f"{kind} '{name}' from {provider}", **capabilities)
                registry.add(Entry(kind, name, factory, description, provider, declared))
                provided.setdefault(provider, {}).setdefault(kind, []).append(name)
            return register

        _call_each(manager, hook_name, strategy_register)

    def architecture_register(provider: str) -> Callable[..., None]:
        def register(model_type: str, spec: ArchitectureSpec, *, description: str = "") -> None:
            registry.add_architecture(ArchitectureEntry(model_type, spec, description, provider))
            provided.setdefault(provider, {}).setdefault("architecture", []).append(model_type)
        return register

    _call_each(manager, hookspecs.ARCHITECTURES_HOOK, architecture_register)

    for name, _plugin in manager.list_name_plugin():
        package, version = _plugin_package(packages, name)
        registry.plugins.append(
            {"plugin": name, "package": package, "version": version,
             "provides": {k: sorted(v) for k, v in provided.get(name, {}).items()}}
        )
    registry.plugins.extend({**entry, "provides": {}} for entry in broken)
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """Return the process-wide registry, loading plugins on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY

