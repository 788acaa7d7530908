"""Cost of MI-PRUN against the floor: one plain forward pass over the same calibration tokens.

For the default model (or --model), prints the time of a plain forward pass of the backbone over
the calibration tokens, then for each scorer/estimator the time of collect + estimate + select,
the number of span evaluations, and the ratio to the plain pass.

    python benchmarks/pipeline_cost.py [--model smollm2-135m] [--num-samples 16] [--seq-len 256] [--prune 6]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from miprun.data.calibration import load_calibration
from miprun.models.loading import load_model
from miprun.registry import get_registry
from miprun.strategies import RunContext, call_with_context

CONFIGS = [
    ("block-influence", None, "greedy", {}),
    ("output-mi", "gaussian-channel", "fast-block-select", {}),
    ("block-mi", "gaussian-channel", "fast-block-select", {}),
    ("block-mi", "renyi", "fast-block-select", {}),
    ("block-mi", "gaussian", "fast-block-select", {}),
    ("block-mi", "ksg", "fast-block-select", {}),
    ("block-mi", "renyi", "brute-force", {}),
]


def plain_forward_seconds(loaded, input_ids: torch.Tensor, batch_size: int) -> float:
    """Seconds for one forward pass of the backbone over ``input_ids`` in the collector's batches."""
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(input_ids), batch_size):
            loaded.adapter.backbone(input_ids=input_ids[first : first + batch_size], use_cache=False)
    return time.perf_counter() - start


def main() -> None:
    """Print the measured table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calib", default="wikitext2")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prune", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    registry = get_registry()
    loaded = load_model(args.model)
    calib = load_calibration(args.calib, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0)
    collector = registry.create("collector", "hidden-states")
    plain_forward_seconds(loaded, calib.input_ids[:1], 1)  # warm-up
    floor = plain_forward_seconds(loaded, calib.input_ids, collector.batch_size)

    tokens = calib.input_ids.numel()
    print(f"model {args.model}; calibration {args.calib} {args.num_samples}x{args.seq_len} = {tokens} tokens; "
          f"torch threads {torch.get_num_threads()}")
    print(f"plain forward pass (floor): {floor:.2f} s")
    print(f"{'scorer':<16}{'estimator':<17}{'selector':<18}{'collect':>8}{'estimate':>9}{'select':>8}{'total':>8}"
          f"{'x fwd':>7}{'evals':>7}  blocks", flush=True)
    rows = []
    for scorer_name, estimator_name, selector_name, options in CONFIGS:
        start = time.perf_counter()
        states = collector.collect(loaded.model, loaded.adapter, calib.input_ids)
        collected = time.perf_counter()
        estimator = registry.create("estimator", estimator_name, **options) if estimator_name else None
        context = RunContext(loaded.model, loaded.adapter, calib.input_ids, loaded.tokenizer)
        scores = call_with_context(registry.create("scorer", scorer_name).score, states, estimator, context=context)
        estimated = time.perf_counter()
        selection = registry.create("selector", selector_name).select(scores, args.prune)
        done = time.perf_counter()
        rows.append({
            "scorer": scorer_name, "estimator": estimator_name or "-", "selector": selector_name,
            "collect_s": collected - start, "estimate_s": estimated - collected, "select_s": done - estimated,
            "total_s": done - start, "ratio_to_forward": (done - start) / floor,
            "span_evaluations": scores.evaluations, "forward_passes": 1 + context.forward_passes,
            "blocks": selection.blocks,
        })
        r = rows[-1]
        print(f"{r['scorer']:<16}{r['estimator']:<17}{r['selector']:<18}{r['collect_s']:>8.2f}{r['estimate_s']:>9.2f}"
              f"{r['select_s']:>8.2f}{r['total_s']:>8.2f}{r['ratio_to_forward']:>7.2f}{r['span_evaluations']:>7}  "
              f"{r['blocks']}", flush=True)

    if args.json:
        print(json.dumps({"floor_s": floor, "tokens": tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
