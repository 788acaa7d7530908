"""Plain removal against healed removal (``--heal linear``), method by method.

For each N and method, the engine selects blocks on the run's calibration (16 × 256 by default),
then the same selection is evaluated under miprun's perplexity protocol with the blocks removed as
they are, and removed after each healing method of ``--heal`` (``linear``: the down projection
before each cut refitted; ``replaceme``: ReplaceMe's map folded there; fitted on ``--heal-samples``
sequences of the same source). Prints perplexity, the ratio healed/plain, the fit's residuals and
the healing time against one plain forward pass over the healing tokens.
With ``--tasks paper --limit 200`` the lm-eval tasks are scored too, plain and healed (the first
healing method), for the
methods of ``--tasks-methods`` at the depth ``--tasks-prune`` (and the dense model once).

A selector that removes blocks one at a time and records its ``removal_order`` (SLEB) chooses, for
N blocks, the first N of its order at any larger depth — the same greedy steps — so it runs once,
at the largest N, and the smaller depths take prefixes of that order.

    python benchmarks/healing.py --prune 3,6,9 --methods mi-prun,shortgpt,angular,sleb --json healing.json
    python benchmarks/healing.py --prune 6 --methods mi-prun --tasks paper --limit 200
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from arguments import add_run_arguments  # the arguments every benchmark shares

from miprun.contracts import Selection
from miprun.data.calibration import load_calibration
from miprun.engine import execute
from miprun.evaluation import evaluate
from miprun.evaluation.lm_eval_bridge import parse_tasks
from miprun.evaluation.perplexity import perplexity
from miprun.models.loading import load_model
from miprun.plans import resolve_plan
from miprun.registry import get_registry
from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon
from pipeline_cost import plain_forward_seconds  # the floor, measured one way for every benchmark


def main() -> None:
    """Print one row per N and method; write them as JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune="6")
    parser.add_argument("--heal-samples", type=int, default=128)
    known = get_registry().names("healer")
    parser.add_argument("--heal", default="linear,replaceme", help=f"comma list of healers ({', '.join(known)})")
    parser.add_argument("--methods", default="mi-prun,shortgpt,angular,sleb")
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--tasks", default="", help="lm-eval tasks (comma list or 'paper'), plain and healed")
    parser.add_argument("--limit", type=int, default=200, help="documents per task")
    parser.add_argument("--tasks-prune", type=int, default=6)
    parser.add_argument("--tasks-methods", default="mi-prun")
    parser.add_argument("--json")
    args = parser.parse_args()
    healers = args.heal.split(",")
    if set(healers) - set(known):
        parser.error(f"--heal: unknown {', '.join(sorted(set(healers) - set(known)))}; choose from {', '.join(known)}")
    loaded = load_model(args.model)
    calib = load_calibration(args.calib, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len,
                             seed=0, model=loaded.model).input_ids
    heal_ids = load_calibration(args.calib, loaded.tokenizer, num_samples=args.heal_samples, seq_len=args.seq_len,
                                seed=0, model=loaded.model).input_ids
    floor = plain_forward_seconds(loaded, heal_ids, 4)

    def ppl(model: Any) -> float:
        return round(perplexity(model, loaded.tokenizer, "wikitext2", seq_len=512, max_windows=args.ppl_windows).perplexity, 2)

    task_names = parse_tasks(args.tasks)

    def tasks(model: Any) -> dict[str, Any]:
        report = evaluate(model, loaded.tokenizer, ppl=(), tasks=task_names, limit=args.limit, task_batch_size=8)
        return {"tasks": {name: r.get("acc") for name, r in report["tasks"].items()},
                "task_average": report["task_average"]}

    rows: list[dict[str, Any]] = []
    dense = {"n": 0, "method": "dense", "plain": ppl(loaded.model)}
    if task_names:
        dense["plain_tasks"] = tasks(loaded.model)
    rows.append(dense)
    print(f"calibration {args.calib} {args.num_samples}x{args.seq_len}; healing fit on {args.heal_samples} sequences "
          f"(one plain pass over them: {floor:.1f} s); dense perplexity {dense['plain']:.2f}"
          + (f", task average {dense['plain_tasks']['task_average']:.4f}" if task_names else ""))
    print(f"{'N':>3}  {'method':<12}{'plain':>9}" + "".join(f"{h:>11}{'ratio':>7}{'heal s':>8}{'x pass':>7}" for h in healers)
          + "  blocks / residual per cut")
    depths = sorted((int(x) for x in args.prune.split(",")), reverse=True)
    for method in args.methods.split(","):
        order: list[int] | None = None  # a greedy selector's removal order, reused for smaller N
        for n in depths:
            if order is not None and len(order) >= n:
                blocks = sorted(order[:n])
            else:
                working = copy.deepcopy(loaded)
                selection = execute(resolve_plan(method=method, healer="none"), working.model, working.adapter, calib, count=n,
                                    tokenizer=loaded.tokenizer).selection
                blocks = sorted(selection.blocks)
                order = selection.info.get("removal_order")
                del working
            plain = copy.deepcopy(loaded)
            RemoveBlocksSurgeon().apply(plain.model, plain.adapter, Selection(blocks))
            row = {"n": n, "method": method, "blocks": blocks, "plain": ppl(plain.model), "healed": {}}
            tasks_here = task_names and n == args.tasks_prune and method in args.tasks_methods.split(",")
            if tasks_here:
                row["plain_tasks"] = tasks(plain.model)
            del plain
            line = f"{n:>3}  {method:<12}{row['plain']:>9.2f}"
            cuts = []
            for heal in healers:
                healed = copy.deepcopy(loaded)
                start = time.perf_counter()
                summary = get_registry().create("healer", heal).heal(healed.model, healed.adapter, blocks, heal_ids)
                seconds = time.perf_counter() - start
                RemoveBlocksSurgeon().apply(healed.model, healed.adapter, Selection(blocks))
                result = {"perplexity": ppl(healed.model), "heal_seconds": round(seconds, 1),
                          "heal_over_pass": round(seconds / floor, 2), "healing": summary}
                if tasks_here and heal == healers[0]:
                    row["healed_tasks"] = tasks(healed.model)
                row["healed"][heal] = result
                del healed
                line += (f"{result['perplexity']:>11.2f}{result['perplexity'] / row['plain']:>7.2f}{seconds:>8.1f}"
                         f"{result['heal_over_pass']:>7.2f}")
                cuts.append(f"{heal} " + "; ".join(f"{c['blocks'][0]}-{c['blocks'][-1]}: {c['relative_residual_before']:.2f}→"
                                                   f"{c['relative_residual_after']:.2f}" for c in summary["cuts"]))
            rows.append(row)
            print(line + f"  {blocks} / " + " | ".join(cuts), flush=True)
            if "plain_tasks" in row:
                print(f"     tasks (limit {args.limit}): average {row['plain_tasks']['task_average']:.4f} plain, "
                      f"{row['healed_tasks']['task_average']:.4f} healed ({healers[0]}); per task plain/healed: "
                      + ", ".join(f"{t} {row['plain_tasks']['tasks'][t]:.3f}/{row['healed_tasks']['tasks'][t]:.3f}"
                                  for t in row["plain_tasks"]["tasks"]), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "floor_s": floor, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
