"""Named methods: the pruning methods researchers compare, as named plans.

``miprun run --method NAME`` and ``miprun compare --methods A,B`` share this table. Besides the
names below, both accept any registered combination written ``SCORER[:ESTIMATOR]+SELECTOR[+SURGEON]``
(``linear-cka+greedy``, ``block-mi:renyi+fast-block-select``), and a single registered scorer or
selector name (it runs with its declared partner), so a plugin's strategies are compared like
built-ins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from miprun.errors import MiprunError, did_you_mean
from miprun.registry import Registry, get_registry


@dataclass(frozen=True)
class Method:
    """A named plan: the strategies it names and their options (unnamed kinds are filled in by
    :func:`miprun.plans.resolve_plan` from the declared partners)."""

    name: str
    scorer: str | None = None
    estimator: str | None = None
    selector: str | None = None
    surgeon: str | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""

    def names(self) -> dict[str, str]:
        """Strategy kind → name, for the kinds this method names."""
        named = {"scorer": self.scorer, "estimator": self.estimator, "selector": self.selector, "surgeon": self.surgeon}
        return {kind: name for kind, name in named.items() if name is not None}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("mi-prun", "output-mi", "gaussian-channel", "set-exchange",
           description="The default: MI of the model output with/without the set, whole-set exchange on a screen, finalists raced"),
    Method("mi-greedy", "output-mi", "gaussian-channel", "greedy",
           description="Single-block output MI, the N least informative blocks at once"),
    Method("mi-prun-local", "block-mi", "gaussian-channel", "fast-block-select",
           description="MI-PRUN paper: block input/output MI + Fast-Block-Select (Algorithm 1)"),
    Method("mi-brute-force", "block-mi", "gaussian-channel", "brute-force",
           description="MI-PRUN paper's refinement scoring every candidate span exactly"),
    Method("shortgpt", "block-influence", selector="greedy", description="ShortGPT block influence (1 − cos), greedy"),
    Method("angular", "angular", selector="best-span", description="Gromov et al.: best contiguous span by angular distance"),
    Method("angular-last", "angular", selector="best-span", options={"scorer": {"last_token": True}},
           description="Angular distance on the last token only (the paper's setting)"),
    Method("sleb", selector="sleb", description="SLEB: iterative removal by calibration loss"),
    Method("ppl", "ppl", selector="greedy", description="Shortened LLaMA PPL: one-shot perplexity without each block"),
    Method("taylor", "taylor", selector="greedy", description="Shortened LLaMA Taylor+: Σ|w·∂L/∂w| per block"),
    Method("magnitude", "magnitude", selector="greedy", description="Mean |w| per block"),
    Method("laco", selector="laco", surgeon="laco", description="LaCo layer collapse: merge following layers into a base"),
    Method("random", selector="random", description="Seeded random blocks"),
)}
"""The named methods, in the order ``miprun compare`` lists them."""

DEFAULT_METHODS = ("mi-prun", "shortgpt", "angular", "sleb", "ppl", "taylor", "laco", "random")
"""What a comparison (``miprun compare``, :func:`miprun.compare.compare`) runs when no methods are
named: the default and one method of every baseline family."""


def parse_method(text: str, registry: Registry | None = None) -> Method:
    """A named method, a combination ``SCORER[:ESTIMATOR]+SELECTOR[+SURGEON]``, or a registered
    scorer or selector name; every strategy name is checked (did-you-mean on a typo)."""
    text = text.strip()
    if text in METHODS:
        return METHODS[text]
    registry = registry or get_registry()
    if "+" not in text:
        for kind in ("scorer", "selector"):
            if text in registry.names(kind):
                return Method(text, **{kind: text}, description=f"{kind} {text} with its declared partners")
        choices = list(METHODS) + registry.names("scorer") + registry.names("selector")
        raise MiprunError(
            f"unknown method '{text}'{did_you_mean(text, choices)}; give a named method ({', '.join(METHODS)}) "
            f"or a combination SCORER[:ESTIMATOR]+SELECTOR[+SURGEON], e.g. block-mi:renyi+fast-block-select"
        )
    parts = text.split("+")
    if len(parts) not in (2, 3) or not all(parts):
        raise MiprunError(f"method '{text}' is not SCORER[:ESTIMATOR]+SELECTOR[+SURGEON] "
                          f"(e.g. linear-cka+greedy or block-mi:renyi+fast-block-select)")
    scorer, _, estimator = parts[0].partition(":")
    named = {"scorer": scorer, "estimator": estimator or None, "selector": parts[1],
             "surgeon": parts[2] if len(parts) == 3 else None}
    for kind, name in named.items():
        if name is not None:
            registry.get(kind, name)
    return Method(text, **named, description="combination")


def parse_methods(methods: str | Sequence[str | Method], registry: Registry | None = None) -> list[Method]:
    """A comma list (or sequence) of methods — :class:`Method` objects, or texts parsed by
    :func:`parse_method`; none twice."""
    items = methods.split(",") if isinstance(methods, str) else list(methods) if isinstance(methods, Sequence) else None
    if items is None or not all(isinstance(m, (str, Method)) for m in items):
        raise MiprunError(f"methods must be a comma list or a list of method names, got {methods!r}")
    specs = [m if isinstance(m, Method) else parse_method(m, registry) for m in items if isinstance(m, Method) or m.strip()]
    if not specs:
        raise MiprunError("give at least one method, e.g. --methods mi-prun,shortgpt")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise MiprunError(f"method listed twice in {','.join(names)}")
    return specs
