"""Plans: which strategies a run composes, resolved by name before any work starts.

A plan names one strategy per kind the run uses (collector, estimator, scorer, selector, surgeon),
with options, and records why each was chosen. It is resolved from what the user named — single
strategies (``--scorer``, ``--selector`` …), a named method (``--method shortgpt``) or a
combination ``SCORER[:ESTIMATOR]+SELECTOR[+SURGEON]`` (:mod:`miprun.methods`) — and the partners
each strategy declared when it was registered (:class:`miprun.contracts.Capabilities`):

1. A selector that reads no scores (SLEB, LaCo, random) runs without scorer and estimator.
2. Without a selector: the named scorer's ``default_selector``; with only an estimator named, the
   granularity's MI scorer (``block-mi`` / ``neuron-mi``) and its default selector; with nothing
   named, the granularity's defaults (:data:`DEFAULTS`).
3. Without a scorer: the selector's ``default_scorer``; else the MI scorer when an estimator is
   named; else the granularity's default scorer.
4. A scorer that needs an estimator gets the named one, else its ``default_estimator``.
5. A collector runs only when a strategy of the plan reads collected states.
6. The surgeon: the named one, else the selector's ``default_surgeon``, else the granularity's.
7. The healer: the named one (``none``: no healing; ``linear`` at neuron granularity means
   ``neuron-linear``), else the granularity's default healer when it declares that it heals the
   plan's surgeon (``remove-blocks``, ``slice-ffn``); a plan it cannot heal (LaCo's merge) runs
   without one, and says why. A named healer that cannot heal the plan's surgeon is an error.

Naming a strategy the plan would not use (an estimator for ShortGPT, a scorer for SLEB) is an
error, as is an option for a kind the plan does not use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from miprun.contracts import GRANULARITIES
from miprun.errors import MiprunError, closest, did_you_mean
from miprun.registry import Registry, get_registry

ORDER = ("collector", "estimator", "scorer", "selector", "healer", "surgeon")
"""Strategy kinds in the order a run uses them."""

DEFAULTS: dict[str, dict[str, str]] = {
    "block": {"collector": "hidden-states", "scorer": "output-mi", "selector": "set-exchange",
              "surgeon": "remove-blocks", "mi_scorer": "block-mi", "healer": "linear"},
    "neuron": {"collector": "ffn-activations", "scorer": "neuron-mi", "selector": "neuron-flap",
               "surgeon": "slice-ffn", "mi_scorer": "neuron-mi", "healer": "neuron-linear"},
}
"""Per granularity: what a run uses for a kind nobody named (see the module docstring)."""

NO_HEALING = "none"
"""The healer name that turns healing off (plain removal)."""


def check_granularity_choice(granularity: str) -> str:
    """Return ``granularity`` if it is one of :data:`~miprun.contracts.GRANULARITIES`, else a one-line error."""
    if granularity not in GRANULARITIES:
        raise MiprunError(
            f"unknown granularity '{granularity}'{did_you_mean(str(granularity), list(GRANULARITIES))}; "
            f"choose one of: {', '.join(GRANULARITIES)}"
        )
    return granularity


def name_at(registry: Registry, kind: str, name: str, granularity: str) -> str:
    """The registered name of ``kind`` to use for ``name`` at ``granularity``.

    An unknown name is an error listing the choices at this granularity. A name whose strategy
    works at another granularity is read as ``<granularity>-<name>`` when such a strategy is
    registered (``--estimator renyi --granularity neuron`` means ``neuron-renyi``); otherwise it is
    a one-line error naming the flag to change.
    """
    alias = f"{granularity}-{name}"
    known = registry.names(kind)
    if name in known and registry.get(kind, name).works_at(granularity):
        return name
    if alias in known and registry.get(kind, alias).works_at(granularity):
        return alias
    choices = registry.names(kind, granularity)
    if name not in known:
        raise MiprunError(f"unknown {kind} '{name}'{_suggestion(registry, kind, name, granularity, choices)}; "
                          f"valid choices: {', '.join(choices)}")
    other = registry.get(kind, name).capabilities.granularity[0]
    raise MiprunError(
        f"{kind} '{name}' works at {other} granularity, not {granularity}; pass --granularity {other} "
        f"or choose a {granularity} {kind}: {', '.join(choices) or 'none installed'}"
    )


def _suggestion(registry: Registry, kind: str, name: str, granularity: str, choices: list[str]) -> str:
    """The did-you-mean for an unknown ``name``: the closest strategy at ``granularity`` (also by its
    short name, ``renyi`` for ``neuron-renyi``), else the closest at another granularity, said so."""
    prefix = f"{granularity}-"
    close = closest(name, choices + [c[len(prefix):] for c in choices if c.startswith(prefix)])
    if close:
        return f" (did you mean '{close}'?)"
    close = closest(name, [n for n in registry.names(kind) if n not in choices])
    if close is None:
        return ""
    other = registry.get(kind, close).capabilities.granularity[0]
    return f" (did you mean '{close}'? it works at {other} granularity: pass --granularity {other})"


@dataclass
class Plan:
    """The strategies of one run, resolved by name, with their options and why each was chosen.

    :ivar names: strategy kind → registered name, for the kinds the run uses (in :data:`ORDER`).
    :ivar options: kind → the options the run passes (the run's seed included where taken).
    :ivar reasons: kind → why this strategy (``"named"``, ``"default of selector 'greedy'"`` …).
    :ivar method: the named method or combination the plan came from, if any.
    """

    granularity: str
    names: dict[str, str]
    options: dict[str, dict[str, Any]]
    reasons: dict[str, str] = field(default_factory=dict)
    method: str | None = None

    def describe(self, registry: Registry) -> dict[str, Any]:
        """Name, effective options (the factory's defaults overridden by the run's), providing
        plugin and reason of every strategy, so a report stays exact when a default changes."""
        described = {}
        for kind, name in self.names.items():
            entry = registry.get(kind, name)
            described[kind] = {"name": name, "options": {**entry.defaults(), **self.options.get(kind, {})},
                               "provider": entry.provider, "why": self.reasons.get(kind, "named")}
            if entry.capabilities.caveat:
                described[kind]["caveat"] = entry.capabilities.caveat
        return described

    def build(self, registry: Registry) -> dict[str, Any]:
        """Create every strategy of the plan (kind → object)."""
        return {kind: registry.create(kind, name, **self.options[kind]) for kind, name in self.names.items()}

    @property
    def label(self) -> str:
        """A short name: the method, else ``scorer+selector`` (or the selector alone)."""
        if self.method:
            return self.method
        scorer = self.names.get("scorer")
        return f"{scorer}+{self.names['selector']}" if scorer else self.names["selector"]


def resolve_plan(
    *,
    granularity: str = "block",
    method: Any = None,
    collector: str | None = None,
    estimator: str | None = None,
    scorer: str | None = None,
    selector: str | None = None,
    surgeon: str | None = None,
    healer: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    registry: Registry | None = None,
) -> Plan:
    """Fill in what the user did not name (module docstring) and check every name and option.

    :param method: a :class:`miprun.methods.Method` or a method string (named method or
        ``SCORER[:ESTIMATOR]+SELECTOR[+SURGEON]``); strategies named explicitly override it.
    """
    from miprun.methods import parse_method

    registry = registry or get_registry()
    check_granularity_choice(granularity)
    named = {"collector": collector, "estimator": estimator, "scorer": scorer, "selector": selector, "surgeon": surgeon}
    options = {kind: dict(values) for kind, values in (options or {}).items()}
    label = None
    reasons = {kind: "named" for kind, name in named.items() if name is not None}
    if method is not None:
        method = parse_method(method, registry) if isinstance(method, str) else method
        label = method.name
        for kind, name in method.names().items():
            if named[kind] is None:
                named[kind], reasons[kind] = name, f"method '{label}'"
        for kind, values in method.options.items():
            options[kind] = {**values, **options.get(kind, {})}
    given = {kind: name_at(registry, kind, name, granularity) for kind, name in named.items() if name is not None}
    names, reasons = _fill(registry, granularity, given, reasons)
    _choose_healer(registry, granularity, healer, names, reasons)
    return _with_options(registry, Plan(granularity, names, {}, reasons, label), options, seed)


def _fill(
    registry: Registry, granularity: str, given: dict[str, str], reasons: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Complete ``given`` names by the rules of the module docstring; returns (names, reasons)."""
    defaults = DEFAULTS[granularity]
    names = dict(given)
    reasons = dict(reasons)

    def caps(kind: str) -> Any:
        return registry.get(kind, names[kind]).capabilities

    def choose(kind: str, name: str | None, why: str) -> None:
        if name is not None:
            names[kind] = name_at(registry, kind, name, granularity)
            reasons[kind] = why

    if "selector" not in names:
        if "scorer" in names:
            choose("selector", caps("scorer").default_selector or defaults["selector"],
                   f"default of scorer '{names['scorer']}'" if caps("scorer").default_selector else f"{granularity} default")
        elif "estimator" in names:
            choose("scorer", defaults["mi_scorer"], f"the {granularity} MI scorer, for the named estimator")
            choose("selector", caps("scorer").default_selector or defaults["selector"], f"default of scorer '{names['scorer']}'")
        else:
            choose("selector", defaults["selector"], f"{granularity} default")
    selector = caps("selector")
    if not selector.needs_scores:
        extra = [kind for kind in ("scorer", "estimator") if kind in given]
        named = [kind for kind in extra if reasons.get(kind) == "named"]
        if named:
            raise MiprunError(
                f"selector '{names['selector']}' reads no scores, so this run has no "
                f"{' or '.join(named)}; drop --{' and --'.join(named)}"
            )
        if extra:  # they came from a named method whose selector was replaced
            parts = " and ".join(f"{kind} '{given[kind]}'" for kind in extra)
            raise MiprunError(
                f"selector '{names['selector']}' reads no scores, so it cannot run with the {parts} of "
                f"{reasons[extra[0]]}; drop --method, or name a selector that reads scores"
            )
    elif "scorer" not in names:
        if selector.default_scorer:
            choose("scorer", selector.default_scorer, f"default of selector '{names['selector']}'")
        elif "estimator" in names:
            choose("scorer", defaults["mi_scorer"], f"the {granularity} MI scorer, for the named estimator")
        else:
            choose("scorer", defaults["scorer"], f"{granularity} default")

    if "scorer" in names:
        scorer = caps("scorer")
        if scorer.needs_estimator and "estimator" not in names:
            choose("estimator", scorer.default_estimator, f"default of scorer '{names['scorer']}'")
            if "estimator" not in names:
                raise MiprunError(f"scorer '{names['scorer']}' needs an estimator; pass --estimator")
        elif not scorer.needs_estimator and "estimator" in names:
            raise MiprunError(f"scorer '{names['scorer']}' uses no estimator; drop --estimator "
                              f"or choose an MI scorer (block-mi, output-mi)")
        if "estimator" in names and scorer.pairwise != caps("estimator").pairwise:
            wanted = "a pairwise (neuron)" if scorer.pairwise else "a block (two-matrix)"
            raise MiprunError(f"scorer '{names['scorer']}' needs {wanted} estimator, not '{names['estimator']}'; "
                              f"choose one of: {', '.join(_estimators(registry, granularity, scorer.pairwise))}")
        if selector.set_scores and not scorer.set_scores:
            raise MiprunError(
                f"selector '{names['selector']}' refines whole block sets and needs a scorer that scores any set "
                f"(output-mi); scorer '{names['scorer']}' scores spans only — use fast-block-select with it"
            )

    reads = any(registry.get(kind, names[kind]).capabilities.reads_states for kind in ("scorer", "selector") if kind in names)
    if reads:
        if "collector" not in names:
            choose("collector", defaults["collector"], f"{granularity} default")
    elif "collector" in names:
        raise MiprunError("no strategy of this run reads collected states, so it runs no collector; drop --collector")
    if "surgeon" not in names:
        default_surgeon = selector.default_surgeon
        choose("surgeon", default_surgeon or defaults["surgeon"],
               f"default of selector '{names['selector']}'" if default_surgeon else f"{granularity} default")
    ordered = {kind: names[kind] for kind in ORDER if kind in names}
    return ordered, {kind: reasons[kind] for kind in ordered}


def _choose_healer(registry: Registry, granularity: str, healer: str | None, names: dict[str, str],
                   reasons: dict[str, str]) -> None:
    """Rule 7 of the module docstring: add the healer to ``names`` (in :data:`ORDER`), or record
    in ``reasons["healer"]`` why the plan has none."""
    surgeon = names["surgeon"]
    if healer == NO_HEALING:
        reasons["healer"] = "--heal none: plain removal"
        return
    if healer is None:
        default = DEFAULTS[granularity]["healer"]
        if default not in registry.names("healer", granularity):
            reasons["healer"] = f"no healer for {granularity} pruning installed: plain removal"
            return
        if surgeon not in registry.get("healer", default).capabilities.heals:
            reasons["healer"] = f"surgeon '{surgeon}' is not healed by '{default}': plain removal"
            return
        name, why = default, f"{granularity} default"
    else:
        name, why = name_at(registry, "healer", healer, granularity), "named"
        heals = registry.get("healer", name).capabilities.heals
        if surgeon not in heals:
            raise MiprunError(f"healer '{name}' heals the {' and '.join(heals) or 'no'} surgeon's removal; this plan "
                              f"uses '{surgeon}' — pass --heal none or choose another method")
    ordered = {kind: (name if kind == "healer" else names[kind]) for kind in ORDER if kind in names or kind == "healer"}
    names.clear()
    names.update(ordered)
    reasons["healer"] = why


def _estimators(registry: Registry, granularity: str, pairwise: bool) -> list[str]:
    return [n for n in registry.names("estimator", granularity) if registry.get("estimator", n).capabilities.pairwise == pairwise]


def _with_options(registry: Registry, plan: Plan, options: dict[str, dict[str, Any]], seed: int) -> Plan:
    """``plan`` with every kind's options checked against its factory; strategies that take a
    ``seed`` get the run's seed unless it is set explicitly. Options for a kind the plan does not
    use are an error."""
    unknown = set(options) - set(plan.names)
    if unknown:
        raise MiprunError(f"options given for {', '.join(sorted(unknown))}, which this run does not use "
                          f"(it uses {', '.join(plan.names)})")
    for kind, name in plan.names.items():
        entry = registry.get(kind, name)
        values = entry.check_options(dict(options.get(kind, {})))
        if "seed" in entry.options() and "seed" not in values:
            values["seed"] = seed
        plan.options[kind] = values
    return plan
