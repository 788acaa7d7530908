"""Plain removal against healed removal (``--heal linear``), method by method.

For each N and method, the engine selects blocks on the run's calibration (16 × 256 by default),
then the same selection is evaluated twice under miprun's perplexity protocol: blocks removed as
they are, and blocks removed after ``miprun.healing.LinearHealer`` folded one map per cut (fitted on
``--heal-samples`` sequences of the same source). Prints perplexity, the ratio healed/plain, the
fit's residuals and the healing time against one plain forward pass over the healing tokens.

    python benchmarks/healing.py --prune 3,6,9 --methods mi-prun,shortgpt,angular,sleb --json healing.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any


from miprun.contracts import Selection
from miprun.data.calibration import load_calibration
from miprun.engine import execute
from miprun.evaluation.perplexity import perplexity
from miprun.healing import LinearHealer
from miprun.models.loading import load_model
from miprun.plans import resolve_plan
from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon
from pipeline_cost import plain_forward_seconds  # the floor, measured one way for every benchmark


def main() -> None:
    """Print one row per N and method; write them as JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calib", default="wikitext2")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--heal-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prune", default="6")
    parser.add_argument("--methods", default="mi-prun,shortgpt,angular,sleb")
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--json")
    args = parser.parse_args()
    loaded = load_model(args.model)
    calib = load_calibration(args.calib, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len,
                             seed=0, model=loaded.model).input_ids
    heal_ids = load_calibration(args.calib, loaded.tokenizer, num_samples=args.heal_samples, seq_len=args.seq_len,
                                seed=0, model=loaded.model).input_ids
    floor = plain_forward_seconds(loaded, heal_ids, 4)

    def ppl(model: Any) -> float:
        return round(perplexity(model, loaded.tokenizer, "wikitext2", seq_len=512, max_windows=args.ppl_windows).perplexity, 2)

    rows: list[dict[str, Any]] = []
    print(f"calibration {args.calib} {args.num_samples}x{args.seq_len}; healing fit on {args.heal_samples} sequences "
          f"(one plain pass over them: {floor:.1f} s)")
    print(f"{'N':>3}  {'method':<12}{'plain':>9}{'healed':>9}{'ratio':>7}{'heal s':>8}{'x pass':>7}  blocks / residual per cut")
    for n in (int(x) for x in args.prune.split(",")):
        for method in args.methods.split(","):
            working = copy.deepcopy(loaded)
            plan = resolve_plan(method=method)
            blocks = sorted(execute(plan, working.model, working.adapter, calib, count=n,
                                    tokenizer=loaded.tokenizer).selection.blocks)
            plain = copy.deepcopy(loaded)
            RemoveBlocksSurgeon().apply(plain.model, plain.adapter, Selection(blocks))
            healed = copy.deepcopy(loaded)
            start = time.perf_counter()
            summary = LinearHealer().heal(healed.model, healed.adapter, blocks, heal_ids)
            seconds = time.perf_counter() - start
            RemoveBlocksSurgeon().apply(healed.model, healed.adapter, Selection(blocks))
            row = {"n": n, "method": method, "blocks": blocks, "plain": ppl(plain.model), "healed": ppl(healed.model),
                   "heal_seconds": round(seconds, 1), "heal_over_pass": round(seconds / floor, 2), "healing": summary}
            rows.append(row)
            cuts = "; ".join(f"{c['blocks'][0]}-{c['blocks'][-1]}: {c['relative_residual_before']:.2f}→"
                             f"{c['relative_residual_after']:.2f}" for c in summary["cuts"])
            print(f"{n:>3}  {method:<12}{row['plain']:>9.2f}{row['healed']:>9.2f}{row['healed'] / row['plain']:>7.2f}"
                  f"{seconds:>8.1f}{row['heal_over_pass']:>7.2f}  {blocks} / {cuts}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "floor_s": floor, "rows": rows}, indent=2))
            del working, plain, healed


if __name__ == "__main__":
    main()
