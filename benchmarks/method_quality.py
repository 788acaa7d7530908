"""Quality and cost of pruning methods, head to head, on more than the calibration's domain.

For each calibration source and each N, every method runs through the engine (the code ``miprun
run`` runs) on the same calibration tokens; the benchmark prints the blocks it removes, its cost
as a multiple of one plain forward pass over those tokens, and the perplexity of the pruned model
under miprun's protocol (docs/evaluation.md) on every evaluation text:

* ``wikitext2`` — WikiText-2 test (the calibration's domain when ``--calib wikitext2``);
* ``paper-tasks`` — the paper's ten task sets as running text (questions, reviews, premises …);
* ``python-code`` — the source of a fixed list of Python standard-library modules (code, a domain
  no calibration here contains), written to a temporary file.

Methods are named methods or combinations (``miprun run --method``), ``default`` for what
``miprun run`` runs without arguments, and ``headline`` for
``miprun run --selector fast-block-select --estimator renyi``; ``LABEL=METHOD;KIND.KEY=VALUE;…``
adds options.

``--heal none,linear`` evaluates every selection plain and healed by each named healer (fitted on
``--heal-samples`` sequences of the calibration source, seed 0, as ``miprun run`` does), so each row
carries a plain and a healed figure per text. A method whose scorer judges healed block sets (the
default's ``output-mi``) gets its healed figures from its own heal-aware selection, healed — what
``miprun run`` saves — and the row records the blocks it chose (``healed_blocks``). A selector that records its ``removal_order`` (SLEB)
runs once, at the largest N, and the smaller depths take prefixes of its order (the same greedy
steps).

    python benchmarks/method_quality.py --calib wikitext2,self --prune 3,6,9 --json method_quality.json
    python benchmarks/method_quality.py --methods default,shortgpt,angular --prune 6
    python benchmarks/method_quality.py --methods default,shortgpt,angular,sleb,ppl,taylor --heal none,linear
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from arguments import add_run_arguments  # the arguments every benchmark shares
from pipeline_cost import (
    plain_forward_seconds,  # the floor, measured one way for every benchmark
)

from miprun.contracts import Selection
from miprun.data.calibration import load_calibration
from miprun.engine import execute, judges_healed
from miprun.evaluation.perplexity import perplexity
from miprun.models.loading import load_model
from miprun.options import parse_options
from miprun.plans import resolve_plan
from miprun.registry import get_registry
from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon

DEFAULT_METHODS = "default,headline,shortgpt,angular,mi-prun-local,mi-prun"
CODE_MODULES = ("argparse", "textwrap", "difflib", "json.decoder", "json.encoder", "calendar", "fractions",
                "statistics", "string", "shlex", "heapq", "bisect", "csv", "configparser", "pprint")
"""Standard-library modules whose source is the ``python-code`` evaluation text."""

NAMED = {"default": {}, "headline": {"selector": "fast-block-select", "estimator": "renyi"}}


def python_code_corpus(directory: Path) -> Path:
    """Write the source of :data:`CODE_MODULES` to one file and return its path."""
    import importlib

    path = directory / "python-code.txt"
    path.write_text("\n\n".join(inspect.getsource(importlib.import_module(m)) for m in CODE_MODULES), encoding="utf-8")
    return path


def plan_for(spec: str, healer: str = "none") -> tuple[str, Any]:
    """``LABEL=METHOD;KIND.KEY=VALUE`` → (label, resolved plan with ``healer``)."""
    label, _, rest = spec.partition("=")
    method, *option_items = (rest or label).split(";")
    options = parse_options(option_items)
    named = NAMED.get(method)
    if named is not None:
        return label, resolve_plan(options=options, healer=healer, **named)
    return label, resolve_plan(method=method, options=options, healer=healer)



def main() -> None:
    """Print one row per calibration source, method and N; write everything as JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune="3,6,9", calib_help="comma list of calibration sources")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma list (see the module docstring)")
    parser.add_argument("--eval", default="wikitext2,paper-tasks,python-code")
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--ppl-seq-len", type=int, default=512)
    parser.add_argument("--heal", default="none", help="comma list: none (plain) and/or healer names")
    parser.add_argument("--heal-samples", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    heals = args.heal.split(",")
    unknown = set(heals) - {"none", *get_registry().names("healer")}
    if unknown:
        parser.error(f"--heal: unknown {', '.join(sorted(unknown))}")
    loaded = load_model(args.model)
    scratch = Path(tempfile.mkdtemp(prefix="miprun-method-quality-"))
    texts = {name: str(python_code_corpus(scratch)) if name == "python-code" else name for name in args.eval.split(",")}

    def evaluate(model: Any, tokenizer: Any) -> dict[str, float]:
        return {name: round(perplexity(model, tokenizer, text, seq_len=args.ppl_seq_len,
                                       max_windows=args.ppl_windows).perplexity, 2) for name, text in texts.items()}

    result: dict[str, Any] = {"args": vars(args), "code_modules": CODE_MODULES, "dense": evaluate(loaded.model, loaded.tokenizer),
                              "rows": []}
    print(f"dense perplexity: {result['dense']}", flush=True)
    methods = args.methods.split(",")
    specs = [plan_for(spec) for spec in methods]
    measured: dict[tuple[Any, ...], dict[str, float]] = {}  # the same blocks removed (and healed) give the same model
    depths = sorted((int(x) for x in args.prune.split(",")), reverse=True)
    for source in args.calib.split(","):
        calib = load_calibration(source, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0,
                                 model=loaded.model)
        heal_ids = None
        if set(heals) - {"none"}:
            heal_ids = load_calibration(source, loaded.tokenizer, num_samples=args.heal_samples, seq_len=args.seq_len,
                                        seed=0, model=loaded.model).input_ids
        plain_forward_seconds(loaded, calib.input_ids[:1], 1)  # warm-up
        floor = plain_forward_seconds(loaded, calib.input_ids, 4)
        print(f"\ncalibration {source} {args.num_samples}x{args.seq_len}; plain forward {floor:.2f} s", flush=True)
        for spec, (label, plan) in zip(methods, specs):
            order: list[int] | None = None  # a greedy selector's removal order, reused for smaller N
            for n in depths:
                working = copy.deepcopy(loaded)
                removal = plan.names.get("surgeon") == "remove-blocks"
                if order is not None and len(order) >= n:
                    blocks = tuple(sorted(order[:n]))
                    seconds, passes = float("nan"), float("nan")
                    RemoveBlocksSurgeon().apply(working.model, working.adapter, Selection(list(blocks)))
                else:
                    timings: dict[str, float] = {}
                    outcome = execute(plan, working.model, working.adapter, calib.input_ids, count=n,
                                      tokenizer=loaded.tokenizer, timings=timings)
                    seconds = outcome.collect_seconds + timings["estimate"] + timings["select"]
                    passes = outcome.forward_passes
                    blocks = tuple(sorted(int(b) for b in outcome.selection.blocks))
                    order = outcome.selection.info.get("removal_order")
                row = {"calib": source, "n": n, "method": label, "plan": plan.names, "blocks": list(blocks),
                       "seconds": round(seconds, 2), "ratio_to_forward": round(seconds / floor, 2),
                       "forward_passes": round(passes, 3), "perplexity": {}, "heal_seconds": {}, "healed_blocks": {}}
                for heal in heals:
                    if heal != "none" and not removal:
                        continue  # a merging surgeon (LaCo) is not healed
                    key = (blocks, heal) if removal else None
                    figures = measured.get(key) if key else None
                    healed_plan = plan_for(spec, heal)[1] if heal != "none" else None
                    if healed_plan is not None and judges_healed(healed_plan.build(get_registry())):
                        aware = copy.deepcopy(loaded)  # selected for the healed model, then healed, as `miprun run` does
                        timings = {}
                        outcome = execute(healed_plan, aware.model, aware.adapter, calib.input_ids, count=n,
                                          tokenizer=loaded.tokenizer, timings=timings, heal_ids=heal_ids)
                        row["healed_blocks"][heal] = sorted(int(b) for b in outcome.selection.blocks)
                        row["heal_seconds"][heal] = round(timings["heal"], 1)
                        row.setdefault("heal_aware_select_seconds", {})[heal] = round(timings["select"], 1)
                        figures = evaluate(aware.model, loaded.tokenizer)
                        del aware
                    elif figures is None:
                        if heal == "none":
                            model = working.model
                        else:
                            healed = copy.deepcopy(loaded)
                            start = time.perf_counter()
                            get_registry().create("healer", heal).heal(healed.model, healed.adapter, list(blocks), heal_ids)
                            row["heal_seconds"][heal] = round(time.perf_counter() - start, 1)
                            RemoveBlocksSurgeon().apply(healed.model, healed.adapter, Selection(list(blocks)))
                            model = healed.model
                        figures = evaluate(model, loaded.tokenizer)
                        if key:
                            measured[key] = figures
                    row["perplexity"][heal] = figures
                result["rows"].append(row)
                print(f"{source:<10}{n:>3}  {label:<28}{row['ratio_to_forward']:>7.2f}x  "
                      + "  ".join(f"{heal}: " + " ".join(f"{k} {v:>8.2f}" for k, v in figures.items())
                                  for heal, figures in row["perplexity"].items()) + f"  {row['blocks']}"
                      + "".join(f"  {heal} chose {b}" for heal, b in row["healed_blocks"].items()), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(result, indent=2))
                del working


if __name__ == "__main__":
    main()
