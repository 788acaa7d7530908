"""Cost of pruning methods against the floor: one plain forward pass over the same calibration tokens.

For the default model (or --model), prints the time of a plain forward pass of the backbone over
the calibration tokens, then for each method the time the engine spends on collect + score +
select (``miprun.engine.execute``, the code ``miprun run`` runs; each row collects afresh), the
forward passes and span evaluations it made, the ratio to the plain pass, and the blocks it chose.
The row ``miprun run`` uses without arguments is marked ``"default": true`` in --json, and the
headline command ``miprun run --selector fast-block-select --estimator renyi`` is its own row.

    python benchmarks/pipeline_cost.py [--model smollm2-135m] [--num-samples 16] [--seq-len 256] [--prune 6] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from arguments import add_run_arguments  # the arguments every benchmark shares
from miprun.data.calibration import load_calibration
from miprun.engine import execute
from miprun.models.loading import load_model
from miprun.plans import resolve_plan
from miprun.registry import get_registry

ROWS: list[tuple[str, dict[str, str]]] = [
    # label, what the user names (resolve_plan keywords)
    ("default (miprun run)", {}),
    ("headline: --selector fast-block-select --estimator renyi", {"selector": "fast-block-select", "estimator": "renyi"}),
    ("shortgpt", {"method": "shortgpt"}),
    ("mi-prun without screen (the previous MI pipeline)", {"method": "mi-prun", "options": {"scorer": {"screen": "off"}}}),
    ("mi-prun-local", {"method": "mi-prun-local"}),
    ("block-mi:gaussian+fast-block-select", {"method": "block-mi:gaussian+fast-block-select"}),
    ("block-mi:ksg+fast-block-select", {"method": "block-mi:ksg+fast-block-select"}),
    ("block-mi:renyi+brute-force", {"method": "block-mi:renyi+brute-force"}),
]


def plain_forward_seconds(loaded, input_ids: torch.Tensor, batch_size: int) -> float:
    """Seconds for one forward pass of the backbone over ``input_ids`` in batches of ``batch_size``."""
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(input_ids), batch_size):
            loaded.adapter.backbone(input_ids=input_ids[first : first + batch_size], use_cache=False)
    return time.perf_counter() - start


def main() -> None:
    """Print the measured table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune=6)
    parser.add_argument("--rows", help="comma list of row labels to run (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    registry = get_registry()
    loaded = load_model(args.model)
    calib = load_calibration(args.calib, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0)
    plain_forward_seconds(loaded, calib.input_ids[:1], 1)  # warm-up
    floor = plain_forward_seconds(loaded, calib.input_ids, 4)
    default_names = resolve_plan(registry=registry).names

    tokens = calib.input_ids.numel()
    print(f"model {args.model}; calibration {args.calib} {args.num_samples}x{args.seq_len} = {tokens} tokens; "
          f"torch threads {torch.get_num_threads()}")
    print(f"plain forward pass (floor): {floor:.2f} s")
    print(f"{'method':<58}{'collect':>8}{'score':>8}{'select':>8}{'total':>8}{'x fwd':>7}{'passes':>7}{'evals':>7}  blocks",
          flush=True)
    rows = []
    wanted = set(args.rows.split(",")) if args.rows else None
    for label, named in ROWS:
        if wanted is not None and label not in wanted:
            continue
        plan = resolve_plan(registry=registry, **named)
        working = copy.deepcopy(loaded)
        timings: dict[str, float] = {}
        outcome = execute(plan, working.model, working.adapter, calib.input_ids, count=args.prune,
                          tokenizer=loaded.tokenizer, registry=registry, timings=timings)
        total = outcome.collect_seconds + timings["estimate"] + timings["select"]
        rows.append({
            "label": label, "plan": plan.names, "default": plan.names == default_names and not named.get("method"),
            "collect_s": outcome.collect_seconds, "estimate_s": timings["estimate"], "select_s": timings["select"],
            "total_s": total, "ratio_to_forward": total / floor, "forward_passes": outcome.forward_passes,
            "span_evaluations": outcome.scores.evaluations, "blocks": sorted(outcome.selection.blocks),
        })
        r = rows[-1]
        print(f"{label[:57]:<58}{r['collect_s']:>8.2f}{r['estimate_s']:>8.2f}{r['select_s']:>8.2f}{r['total_s']:>8.2f}"
              f"{r['ratio_to_forward']:>7.2f}{r['forward_passes']:>7.2f}{r['span_evaluations']:>7}  {r['blocks']}", flush=True)
        del working, outcome

    if args.json:
        print(json.dumps({"floor_s": floor, "tokens": tokens, "prune": args.prune, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
