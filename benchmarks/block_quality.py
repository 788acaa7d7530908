"""Does a block score pick the blocks whose removal really costs least?

For one model and calibration set this benchmark measures

1. the true cost of removing each single block: the increase of next-token loss on held-out text
   (WikiText-2 *test* windows, disjoint from the calibration text);
2. every block score (scorer × estimator × options) from one collection of boundary states, and its
   Spearman and Kendall correlation with the true cost;
3. for each N, the blocks each method removes and the perplexity of the pruned model under the
   fixed perplexity protocol (miprun.evaluation.perplexity; --ppl-windows limits the windows).

It prints one table per part and writes everything as JSON with --json FILE.

    python benchmarks/block_quality.py --prune 3,6,9 --json block_quality.json
    python benchmarks/block_quality.py --calib self        # model-generated calibration text
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import torch
from scipy.stats import kendalltau, spearmanr

from arguments import add_run_arguments  # the arguments every benchmark shares
from miprun.contracts import RunContext, Selection
from miprun.data.calibration import load_calibration
from miprun.data.datadir import local_file
from miprun.evaluation.perplexity import perplexity
from miprun.models.loading import load_model
from miprun.probing import Prober
from miprun.registry import get_registry

SCORES: list[tuple[str, str, str | None, dict[str, Any]]] = [
    # label, scorer, estimator, estimator options
    ("MI output (default)", "output-mi", "gaussian-channel", {}),
    ("cosine (ShortGPT)", "block-influence", None, {}),
    ("angular", "angular", None, {}),
    ("MI gaussian-channel", "block-mi", "gaussian-channel", {}),
    ("MI gaussian-channel rms", "block-mi", "gaussian-channel", {"normalize": "rms"}),
    ("MI gaussian pca64", "block-mi", "gaussian", {}),
    ("MI renyi (default)", "block-mi", "renyi", {}),
    ("MI renyi median", "block-mi", "renyi", {"sigma": "median"}),
    ("MI renyi raw standardized", "block-mi", "renyi", {"normalize": "standardize", "self_normalize": False}),
    ("MI renyi raw median", "block-mi", "renyi", {"normalize": "standardize", "self_normalize": False,
                                                  "sigma": "median"}),
    ("MI renyi raw rms", "block-mi", "renyi", {"self_normalize": False}),
    ("MI ksg pca8", "block-mi", "ksg", {}),
]

METHODS: list[tuple[str, str, str | None, str, dict[str, Any]]] = [
    # label, scorer, estimator, selector, scorer options
    ("mi-prun (default)", "output-mi", "gaussian-channel", "set-exchange", {}),
    ("mi output greedy", "output-mi", "gaussian-channel", "greedy", {}),
    ("mi-prun hidden space", "output-mi", "gaussian-channel", "set-exchange", {"space": "hidden"}),
    ("mi-prun local", "block-mi", "gaussian-channel", "fast-block-select", {}),
    ("mi-prun renyi", "block-mi", "renyi", "fast-block-select", {}),
    ("shortgpt", "block-influence", None, "greedy", {}),
    ("angular span", "angular", None, "best-span", {}),
]


def removal_costs(loaded, held_out: torch.Tensor) -> tuple[float, list[float]]:
    """Held-out loss of the dense model and the loss increase when each single block is skipped."""
    prober = Prober(loaded.model, loaded.adapter, held_out)
    dense = prober.loss()
    return dense, [prober.loss(skip=[i]) - dense for i in range(loaded.adapter.num_blocks)]


def main() -> None:
    """Run the three parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune="3,6,9")
    parser.add_argument("--held-out-samples", type=int, default=16)
    parser.add_argument("--held-out-seq-len", type=int, default=256)
    parser.add_argument("--ppl-windows", type=int, default=40, help="0 skips the perplexity part")
    parser.add_argument("--ppl-seq-len", type=int, default=512)
    parser.add_argument("--skip-costs", action="store_true", help="only selections and perplexity")
    parser.add_argument("--methods", help="comma list of method labels of part 3 to run (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args()
    depths = [int(x) for x in args.prune.split(",")]
    registry = get_registry()
    loaded = load_model(args.model)
    result: dict[str, Any] = {"args": vars(args)}

    calib = load_calibration(args.calib, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len,
                             seed=0, model=loaded.model)
    states = registry.create("collector", "hidden-states").collect(loaded.model, loaded.adapter, calib.input_ids)
    print(f"model {args.model}, calibration {args.calib} {args.num_samples}x{args.seq_len}, "
          f"{states.info['tokens']} tokens per boundary")

    context = RunContext(loaded.model, loaded.adapter, calib.input_ids, loaded.tokenizer)
    scores: dict[str, Any] = {}
    for label, scorer, estimator, options in SCORES:
        start = time.perf_counter()
        scores[label] = score_with(registry, context, states, scorer, estimator, options)
        scores[label].singles()
        result.setdefault("score_seconds", {})[label] = time.perf_counter() - start
        if scores[label].screen is not None:  # the cheap ranking the default's search reads
            start = time.perf_counter()
            screen = f"{label}, screen of {scores[label].info['screen_samples']} sequence(s)"
            scores[screen] = scores[label].screen
            scores[screen].singles()
            result["score_seconds"][screen] = time.perf_counter() - start

    if not args.skip_costs:
        test_text = local_file("wikitext-2", "test.txt")
        held_out = load_calibration(str(test_text) if test_text else "wikitext2", loaded.tokenizer,
                                    num_samples=args.held_out_samples, seq_len=args.held_out_seq_len, seed=1).input_ids
        dense_loss, costs = removal_costs(loaded, held_out)
        result["removal_cost"] = {"dense_loss": dense_loss, "per_block": costs}
        print(f"\nsingle-block removal cost (held-out loss increase, dense loss {dense_loss:.3f}):")
        print(" ".join(f"{c:.2f}" for c in costs))
        print(f"\n{'score':<28}{'spearman':>9}{'kendall':>9}{'seconds':>9}")
        for label, sc in scores.items():
            rho, tau = record_correlation(result, label, sc)
            print(f"{label:<28}{rho:>9.3f}{tau:>9.3f}{result['score_seconds'][label]:>9.2f}")

    if args.ppl_windows <= 0:
        return finish(result, args.json)
    dense_ppl = perplexity(loaded.model, loaded.tokenizer, "wikitext2", seq_len=args.ppl_seq_len,
                           max_windows=args.ppl_windows).perplexity
    result["dense_perplexity"] = dense_ppl
    print(f"\nperplexity protocol: wikitext2, {args.ppl_windows} windows of {args.ppl_seq_len}; dense {dense_ppl:.2f}")
    print(f"{'method':<22}{'N':>3}{'perplexity':>12}  blocks")
    # one score object per scorer, shared by every N (and by part 2 where it has default options)
    method_scores = {(scorer, estimator, "{}"): scores[label]
                     for label, scorer, estimator, options in SCORES if not options}
    for n in depths:
        for label, scorer, estimator, selector, scorer_options in METHODS:
            if args.methods and label not in args.methods.split(","):
                continue
            key = (scorer, estimator, json.dumps(scorer_options, sort_keys=True))
            if key not in method_scores:
                method_scores[key] = score_with(registry, context, states, scorer, estimator, {}, scorer_options)
                if "removal_cost" in result:
                    rho, _ = record_correlation(result, label, method_scores[key])
                    print(f"  ({label}: Spearman ρ with the removal cost {rho:.3f})", flush=True)
            span_scores = method_scores[key]
            start = time.perf_counter()
            blocks = registry.create("selector", selector).select(span_scores, n).blocks
            seconds = time.perf_counter() - start
            pruned = copy.deepcopy(loaded)
            registry.create("surgeon", "remove-blocks").apply(pruned.model, pruned.adapter, Selection(blocks))
            ppl = perplexity(pruned.model, pruned.tokenizer, "wikitext2", seq_len=args.ppl_seq_len,
                             max_windows=args.ppl_windows).perplexity
            result.setdefault("selections", []).append(
                {"method": label, "n": n, "blocks": blocks, "perplexity": ppl, "select_seconds": seconds,
                 "set_mi": span_scores.set_value(blocks) if span_scores.supports_sets else None})
            print(f"{label:<22}{n:>3}{ppl:>12.2f}  {blocks}  ({seconds:.0f} s)", flush=True)
            finish(result, args.json)
            del pruned
    finish(result, args.json)


def record_correlation(result: dict[str, Any], label: str, scores: Any) -> tuple[float, float]:
    """Spearman ρ and Kendall τ of ``scores``' single-block importance with the measured removal
    cost, stored in ``result["correlation"][label]``."""
    importance, costs = scores.singles(), result["removal_cost"]["per_block"]
    rho, tau = spearmanr(importance, costs).correlation, kendalltau(importance, costs).correlation
    result.setdefault("correlation", {})[label] = {"spearman": rho, "kendall": tau}
    return rho, tau


def score_with(registry, context: RunContext, states, scorer: str, estimator: str | None, options: dict,
               scorer_options: dict | None = None) -> Any:
    """The span scores of ``scorer`` (with its ``scorer_options``, and ``estimator`` with its
    ``options``) on ``states``."""
    est = registry.create("estimator", estimator, **options) if estimator else None
    return registry.create("scorer", scorer, **(scorer_options or {})).score(states, est, context=context)


def finish(result: dict[str, Any], path: str | None) -> None:
    """Write ``result`` as JSON to ``path`` when one is given."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
