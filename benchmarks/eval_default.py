"""Print the evaluation suite's Must-show figures for the default model (issue 5).

    python benchmarks/eval_default.py                      # everything (about an hour on 2 CPU cores)
    python benchmarks/eval_default.py --limit 20 --max-windows 8 --lm-eval-pages 4   # a quick look

1. WikiText-2 perplexity two ways: miprun's protocol (wiki.test.raw) and lm-eval's ``wikitext``
   word perplexity (document-level pages).
2. The paper's ten tasks, zero-shot, ``--limit`` documents each.
3. Size and speed of the dense model and of the same model with ``--remove`` blocks dropped
   (blocks 22..27 of 30 by default: a fixed choice standing in for a pruning method), the
   measured speed-ups beside the ideal T/(T−N).
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from miprun.evaluation import SpeedConfig, compare_reports, evaluate
from miprun.evaluation.report import print_report
from miprun.models.loading import load_model


def main() -> None:
    """Run the figures and print them as rich tables (and optionally JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=200, help="documents per task (0: skip the tasks)")
    parser.add_argument("--max-windows", type=int, default=None, help="perplexity windows (default: all)")
    parser.add_argument("--lm-eval-pages", type=int, default=None, help="wikitext pages for lm-eval (default: all 62)")
    parser.add_argument("--remove", type=int, default=6, help="blocks removed for the speed-up check")
    parser.add_argument("--json", default=None, help="write all reports here")
    args = parser.parse_args()

    console = Console()
    start = time.perf_counter()
    dense = load_model(args.model)
    report = evaluate(
        dense.model, dense.tokenizer, ppl=("wikitext2",), ppl_lm_eval=True, lm_eval_pages=args.lm_eval_pages,
        max_windows=args.max_windows, tasks="paper" if args.limit else (), limit=args.limit or None,
        latency=True, batch_size=4, progress=True, source=dense.source, adapter=dense.adapter,
    )
    print_report(report, console)

    total = dense.adapter.num_blocks
    drop = set(range(total - args.remove - 2, total - 2))
    pruned = load_model(args.model)
    pruned.adapter.keep_blocks([i for i in range(total) if i not in drop])
    speed = SpeedConfig()
    dense_speed = evaluate(dense.model, dense.tokenizer, ppl=(), latency=True, speed_config=speed, adapter=dense.adapter)
    pruned_speed = evaluate(pruned.model, pruned.tokenizer, ppl=(), latency=True, speed_config=speed, adapter=pruned.adapter)
    pruned_speed["comparison"] = compare_reports(dense_speed, pruned_speed)
    console.print(f"[bold]blocks {sorted(drop)} removed[/bold]")
    print_report(pruned_speed, console)
    console.print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"dense": report, "speedup": pruned_speed}, handle, indent=2)


if __name__ == "__main__":
    main()
