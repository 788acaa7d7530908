"""Cost of pruning methods against the floor: one plain forward pass over the same calibration tokens.

For the default model (or --model), prints the time of a plain forward pass of the backbone over
the calibration tokens, then for each method the time the engine spends on collect + score +
select (``miprun.engine.execute``, the code ``miprun run`` runs; each row collects afresh), the
forward passes and span evaluations it made, the ratio to the plain pass, and the blocks it chose.
The row ``miprun run`` uses without arguments is marked ``"default": true`` in --json, and the
headline command ``miprun run --selector fast-block-select --estimator renyi`` is its own row.
These rows time selection alone (healing off). The last section runs the default end to end as
``miprun run`` does (``miprun.prune``: selection, healing on ``--heal-samples`` sequences, the
quality check) and sets it against one plain forward pass over every token the run reads
(calibration, healing and check windows), stage by stage, and selection + healing alone against
one plain pass over the selection and healing sequences. With ``--width RATIO`` that last section
times the paper's width command instead (``miprun run --granularity neuron --ratio RATIO --selector
mds-cluster --estimator renyi``, healed by default), against the same floors.

    python benchmarks/pipeline_cost.py [--model smollm2-135m] [--num-samples 16] [--seq-len 256] [--prune 6] [--json]
    python benchmarks/pipeline_cost.py --rows none --width 0.2
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
    parser.add_argument("--heal-samples", type=int, default=128)
    parser.add_argument("--width", type=float, metavar="RATIO",
                        help="end to end: the paper's width command at this ratio instead of the block default")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-o", "--option", action="append", default=[],
                        help="KIND.KEY=VALUE for the end-to-end run, as miprun run takes it (e.g. healer.after_cut=1)")
    args = parser.parse_args()

    registry = get_registry()
    loaded = load_model(args.model)
    calib = load_calibration(args.calib, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0)
    plain_forward_seconds(loaded, calib.input_ids[:1], 1)  # warm-up
    floor = plain_forward_seconds(loaded, calib.input_ids, 4)
    default_names = resolve_plan(registry=registry, healer="none").names

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
        plan = resolve_plan(registry=registry, healer="none", **named)
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

    end_to_end = default_end_to_end(loaded, args)
    if args.json:
        print(json.dumps({"floor_s": floor, "tokens": tokens, "prune": args.prune, "rows": rows,
                          "default_end_to_end": end_to_end}, indent=2))


def default_end_to_end(loaded, args) -> dict:
    """``miprun run``'s default (or, with ``--width``, the paper's width command) on a copy of
    ``loaded`` (nothing saved), against one plain forward pass over every sequence it reads; prints
    one line per stage and the totals."""
    from miprun.options import parse_options
    from miprun.pipeline import prune
    from miprun.quality import WINDOWS

    reads = [load_calibration(args.calib, loaded.tokenizer, num_samples=count, seq_len=args.seq_len, seed=seed).input_ids
             for count, seed in ((args.num_samples, 0), (args.heal_samples, 0), (WINDOWS, 1))]
    everything = torch.cat(reads)
    run_floor = plain_forward_seconds(loaded, torch.cat(reads[:2]), 4)  # the selection and healing sequences
    floor = run_floor + plain_forward_seconds(loaded, reads[2], 4)  # and the check's windows
    if args.width is None:
        command, what = "miprun run", {"n": args.prune}
    else:
        command = f"miprun run --granularity neuron --ratio {args.width} --selector mds-cluster --estimator renyi"
        what = {"ratio": args.width, "granularity": "neuron", "selector": "mds-cluster", "estimator": "renyi"}
    result = prune(copy.deepcopy(loaded), calib=args.calib, num_samples=args.num_samples, seq_len=args.seq_len,
                   heal_samples=args.heal_samples, options=parse_options(args.option), save=False, **what)
    timings = {k: v for k, v in result.report["timings"].items() if k not in ("load", "calibrate")}
    work = sum(timings.values())
    keep = getattr(result.selection, "keep", None)
    chosen = f"blocks {sorted(result.selection.blocks)}" if keep is None else \
        f"kept FFN widths {sorted({len(v) for v in keep.values()})}"
    print(f"\nend to end ({command}{''.join(' -o ' + o for o in args.option)}): reads {len(everything)} sequences x {args.seq_len} "
          f"({args.num_samples} selection, {args.heal_samples} healing, {WINDOWS} check); one plain pass over them: "
          f"{floor:.2f} s")
    for name, seconds in sorted(timings.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<10}{seconds:>8.2f} s  {seconds / floor:>5.2f} x pass")
    print(f"  {'total':<10}{work:>8.2f} s  {work / floor:>5.2f} x pass   {chosen}; "
          f"quality check {result.report['quality']['ratio']:.2f} x dense")
    pruning = sum(v for k, v in timings.items() if k != "check")
    print(f"selection + healing alone (every stage but the check): {pruning:.2f} s = {pruning / run_floor:.2f} x one plain "
          f"pass over the {args.num_samples + args.heal_samples} selection and healing sequences ({run_floor:.2f} s)")
    return {"command": command, "floor_s": floor, "sequences": len(everything), "timings": timings, "total_s": work,
            "ratio_to_forward": work / floor, "chosen": chosen,
            "selection_and_healing": {"seconds": pruning, "floor_s": run_floor, "ratio_to_forward": pruning / run_floor}}


if __name__ == "__main__":
    main()
