"""Stability of block selection across calibration data (the MI-PRUN paper's Tables 7–8).

Runs selection for several calibration sources, sequence lengths and sample counts, and reports
each selection and its Jaccard agreement with the reference setting (first source, largest length
and count), for the default MI pipeline (output MI in centred-logit space + Fast-Block-Select), the
same on the head's raw input, the paper's local block MI and ShortGPT's cosine.

    python benchmarks/stability.py --sources wikitext2,self --seq-lens 64,128,256 --samples 4,8,16 --prune 6
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from miprun.contracts import RunContext
from miprun.data.calibration import load_calibration
from miprun.models.loading import load_model
from miprun.registry import get_registry

METHODS: dict[str, tuple[str, str | None, str, dict[str, Any]]] = {
    # name: scorer, estimator, selector, scorer options
    "mi-prun": ("output-mi", "gaussian-channel", "set-exchange", {}),
    "mi-prun-hidden": ("output-mi", "gaussian-channel", "set-exchange", {"space": "hidden"}),
    "mi-prun-local": ("block-mi", "gaussian-channel", "fast-block-select", {}),
    "shortgpt": ("block-influence", None, "greedy", {}),
}


def jaccard(a: list[int], b: list[int]) -> float:
    """|a ∩ b| / |a ∪ b| of two block selections."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def main() -> None:
    """Print one row per setting with every method's blocks and Jaccard to the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sources", default="wikitext2,self")
    parser.add_argument("--seq-lens", default="64,128,256")
    parser.add_argument("--samples", default="4,8,16")
    parser.add_argument("--prune", type=int, default=6)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of methods to run (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args()
    registry = get_registry()
    loaded = load_model(args.model)
    sources = args.sources.split(",")
    lengths = sorted(int(x) for x in args.seq_lens.split(","))
    counts = sorted(int(x) for x in args.samples.split(","))
    collector = registry.create("collector", "hidden-states")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; valid methods: {', '.join(METHODS)}")

    rows: list[dict[str, Any]] = []
    for source, seq_len, count in itertools.product(sources, reversed(lengths), reversed(counts)):
        calib = load_calibration(source, loaded.tokenizer, num_samples=count, seq_len=seq_len, seed=0, model=loaded.model)
        states = collector.collect(loaded.model, loaded.adapter, calib.input_ids)
        row: dict[str, Any] = {"source": source, "seq_len": seq_len, "samples": count}
        for method in methods:
            scorer, estimator, selector, scorer_options = METHODS[method]
            est = registry.create("estimator", estimator) if estimator else None
            context = RunContext(loaded.model, loaded.adapter, calib.input_ids, loaded.tokenizer)
            scores = registry.create("scorer", scorer, **scorer_options).score(states, est, context=context)
            row[method] = registry.create("selector", selector).select(scores, args.prune).blocks
        rows.append(row)
        print(f"{source:<10}{seq_len:>5}{count:>4}  " + "  ".join(f"{m} {row[m]}" for m in methods), flush=True)
        write_json(args.json, {"args": vars(args), "rows": rows, "complete": False})

    reference = rows[0]
    print(f"\nJaccard agreement with the reference ({reference['source']}, {reference['seq_len']} tokens, "
          f"{reference['samples']} samples), prune {args.prune}:")
    print(f"{'source':<10}{'len':>5}{'n':>4}" + "".join(f"{m:>16}" for m in methods))
    for row in rows:
        row["jaccard"] = {m: jaccard(row[m], reference[m]) for m in methods}
        print(f"{row['source']:<10}{row['seq_len']:>5}{row['samples']:>4}" + "".join(f"{row['jaccard'][m]:>16.2f}" for m in methods))
    means = {m: sum(r["jaccard"][m] for r in rows) / len(rows) for m in methods}
    print(f"{'mean':<19}" + "".join(f"{means[m]:>16.2f}" for m in methods))
    write_json(args.json, {"args": vars(args), "rows": rows, "mean_jaccard": means, "complete": True})


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` when one is given (after every row, so a stopped run keeps its rows)."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
