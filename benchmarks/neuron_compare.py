"""Width (FFN-neuron) pruning of SmolLM2-135M compared at one ratio: WikiText-2 perplexity per method.

Every method removes the same number of neurons from every FFN layer (ratio 0.2: 1536 → 1229) on the
same calibration windows (WikiText-2 validation, 16 × 256 tokens, seed 0); every pruned model is
scored with miprun's perplexity protocol (:mod:`miprun.evaluation.perplexity`) on the first
``--max-windows`` windows of ``--eval-seq-len`` tokens of the WikiText-2 test set. The Rényi row
runs the literal command

    miprun run --granularity neuron --ratio 0.2 --selector mds-cluster --estimator renyi --output DIR

in a subprocess, then reloads DIR with ``AutoModelForCausalLM.from_pretrained`` and evaluates the
reloaded model, so the row also proves the checkpoint is standard.

    MIPRUN_CACHE_DIR=/tmp/mcache MIPRUN_DATA_DIR=/work/shared/data \\
        python benchmarks/neuron_compare.py --markdown neuron_compare.md --json neuron_compare.json

Every method runs plain (``--heal none``) and healed (``--heal linear``: the kept neurons' down
projection refitted, the default of ``miprun run``), as ``--heal`` lists; ``--ratio`` takes a comma
list; ``--blocks-row`` adds, per ratio, the default block removal (healed) whose parameter count is
nearest the width rows', so the two axes can be compared at the same size.

Methods (``--methods``, comma-separated): ``dense``, ``magnitude``, ``random``, ``wanda`` (Wanda-sp),
``flap`` (FLAP's fluctuation metric), ``mi-energy`` (output energy discounted by Gaussian MI with
the kept neurons, greedy), ``pearson``
(mds-cluster on |ρ|, the paper's ablation), ``renyi`` (the paper's command: mds-cluster on Rényi
α = 1.01 MI, clusters weighted by output energy by default), ``renyi-literal`` (the same with
``keep=centroid``: the paper's unweighted k-means and nearest-to-centroid neurons), ``renyi2``
(α = 2), ``copula`` (Gaussian-copula MI), ``threshold`` (Algorithm 1 on
Rényi α = 1.01 MI), and ``pearson-merge`` / ``copula-merge`` / ``renyi-merge``: mds-cluster with
``merge=True`` (each removed neuron's down column folded into its cluster's kept neuron — an
extension, not in the paper).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = {
    "magnitude": {"selector": "magnitude"},
    "random": {"selector": "random"},
    "wanda": {"selector": "wanda"},
    "flap": {"selector": "flap"},
    "mi-energy": {"selector": "mi-energy"},
    "pearson": {"selector": "mds-cluster", "estimator": "pearson"},
    "copula": {"selector": "mds-cluster", "estimator": "gaussian"},
    "renyi-literal": {"selector": "mds-cluster", "estimator": "renyi", "options": {"selector": {"keep": "centroid"}}},
    "renyi2": {"selector": "mds-cluster", "estimator": "renyi", "options": {"estimator": {"alpha": 2}}},
    "threshold": {"selector": "mi-threshold", "estimator": "renyi"},
    "pearson-merge": {"selector": "mds-cluster", "estimator": "pearson", "options": {"selector": {"merge": True}}},
    "copula-merge": {"selector": "mds-cluster", "estimator": "gaussian", "options": {"selector": {"merge": True}}},
    "renyi-merge": {"selector": "mds-cluster", "estimator": "renyi", "options": {"selector": {"merge": True}}},
}


def evaluate(model, tokenizer, args) -> dict:
    """WikiText-2 perplexity of ``model`` under miprun's protocol (first ``max_windows`` windows)."""
    from miprun.evaluation import evaluate as run_evaluation

    report = run_evaluation(model, tokenizer, ppl=("wikitext2",), seq_len=args.eval_seq_len,
                            max_windows=args.max_windows, progress=False)
    ppl = report["perplexity"]["wikitext2"]
    return {"perplexity": ppl["perplexity"], "tokens": ppl["tokens"], "windows": ppl["windows"]}


def row_from_report(method: str, report: dict, seconds: float, ppl: dict) -> dict:
    """One table row from a run report."""
    surgery = report["surgery"]
    scores = report.get("neuron_scores", {})
    return {
        "method": method,
        "selector": report["strategies"]["selector"]["name"],
        "estimator": report["strategies"].get("estimator", {}).get("name", "—"),
        "width": surgery["width_after"],
        "parameters": surgery["parameters_after"],
        "relative_flops": surgery["relative_flops"],
        "ppl": ppl["perplexity"],
        "eval_tokens": ppl["tokens"],
        "prune_seconds": round(seconds, 1),
        "estimate_s_per_layer": scores.get("mean_seconds_per_layer"),
        "forward_passes": report["evaluations"]["forward_passes"],
    }


def blocks_row(args, width_rows: list[dict]) -> dict:
    """The default block removal (healed), with the block count whose parameters are nearest the
    width rows' (their mean), evaluated the same way."""
    import miprun
    from miprun.models.loading import load_model
    from miprun.surgeons.slice_ffn import linear_flops

    loaded = load_model(args.model)
    dense_flops = linear_flops(loaded.model)
    per_block = sum(p.numel() for p in loaded.adapter.blocks[0].parameters())
    total = sum(p.numel() for p in loaded.model.parameters())
    target = sum(r["parameters"] for r in width_rows) / len(width_rows)
    count = max(1, round((total - target) / per_block))
    start = time.perf_counter()
    result = miprun.prune(loaded, n=count, calib="wikitext2", save=False)
    seconds = time.perf_counter() - start
    ppl = evaluate(result.model, result.tokenizer, args)
    return {"method": f"blocks -{count}+heal", "selector": result.report["strategies"]["selector"]["name"],
            "estimator": result.report["strategies"].get("estimator", {}).get("name", "—"),
            "width": result.adapter.ffn_width(0), "parameters": result.report["surgery"]["parameters_after"],
            "relative_flops": linear_flops(result.model) / dense_flops, "ppl": ppl["perplexity"],
            "eval_tokens": ppl["tokens"], "prune_seconds": round(seconds, 1), "estimate_s_per_layer": None,
            "forward_passes": result.report["evaluations"]["forward_passes"]}


def run_renyi_cli(args, out_dir: Path, heal: str) -> tuple[dict, float]:
    """Run the literal ``miprun run`` command (plain with ``heal`` none); return its report and wall time."""
    command = [sys.executable, "-m", "miprun.cli.main", "run", "--model", args.model, "--granularity", "neuron",
               "--ratio", str(args.ratio_value), "--selector", "mds-cluster", "--estimator", "renyi",
               "--output", str(out_dir), "--overwrite", "--json", *(["--heal", "none"] if heal == "none" else [])]
    print("$ miprun " + " ".join(command[3:]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"miprun run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout), seconds


def main() -> None:
    """Prune with every method, evaluate, print one table (markdown) and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", default="0.2", help="comma list of ratios")
    parser.add_argument("--heal", default="none,linear", help="comma list: none (plain) and/or linear (healed)")
    parser.add_argument("--blocks-row", action="store_true", help="add the healed block removal of nearest size")
    parser.add_argument("--methods", default="dense,magnitude,random,pearson,renyi")
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=32)
    parser.add_argument("--output-dir", default="pruned/neuron-compare")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import miprun
    from miprun.models.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    out_root = Path(args.output_dir)
    heals = [h.strip() for h in args.heal.split(",") if h.strip()]
    for ratio in [float(r) for r in args.ratio.split(",")]:
        args.ratio_value = ratio
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            for heal in heals if method != "dense" else ["none"]:
                label = method if heal == "none" else f"{method}+heal"
                print(f"== ratio {ratio} {label}", file=sys.stderr, flush=True)
                if method == "dense":
                    loaded = load_model(args.model)
                    ppl = evaluate(loaded.model, loaded.tokenizer, args)
                    from miprun.surgeons.remove_blocks import count_parameters

                    row = {"method": "dense", "selector": "—", "estimator": "—",
                           "width": loaded.adapter.ffn_width(0), "parameters": count_parameters(loaded.model),
                           "relative_flops": 1.0, "ppl": ppl["perplexity"], "eval_tokens": ppl["tokens"],
                           "prune_seconds": 0.0, "estimate_s_per_layer": None, "forward_passes": 0}
                elif method == "renyi":
                    out_dir = out_root / f"renyi-mds-cluster-{ratio}-{heal}"
                    report, seconds = run_renyi_cli(args, out_dir, heal)
                    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
                    tokenizer = AutoTokenizer.from_pretrained(out_dir)
                    assert model.config.intermediate_size == report["surgery"]["width_after"]
                    ppl = evaluate(model, tokenizer, args)
                    row = row_from_report(label, report, seconds, ppl)
                    row["checkpoint"] = str(out_dir)
                else:
                    spec = METHODS[method]
                    start = time.perf_counter()
                    result = miprun.prune(args.model, granularity="neuron", ratio=ratio, save=False,
                                          selector=spec["selector"], estimator=spec.get("estimator"),
                                          options=spec.get("options"), heal=heal)
                    seconds = time.perf_counter() - start
                    ppl = evaluate(result.model, result.tokenizer, args)
                    row = row_from_report(label, result.report, seconds, ppl)
                rows.append({**row, "ratio": ratio})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.blocks_row:
            rows.append({**blocks_row(args, [r for r in rows if r.get("ratio") == ratio and r["method"] != "dense"]),
                         "ratio": ratio})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    header = ("| ratio | method | selector | estimator | FFN width | parameters | relative FLOPs | WikiText-2 ppl | "
              "prune time (s) | estimate s/layer |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        per_layer = f"{r['estimate_s_per_layer']:.2f}" if r["estimate_s_per_layer"] is not None else "—"
        lines.append(f"| {r.get('ratio', '—')} | {r['method']} | {r['selector']} | {r['estimator']} | {r['width']} | "
                     f"{r['parameters']:,} | {r['relative_flops']:.3f} | {r['ppl']:.2f} | {r['prune_seconds']:.0f} | "
                     f"{per_layer} |")
    setting = (f"{args.model}, ratios {args.ratio}, healing {args.heal}, calibration WikiText-2 valid 16×256 (seed 0); perplexity: "
               f"WikiText-2 test, first {args.max_windows} windows of {args.eval_seq_len} tokens; "
               f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    table = "\n".join(lines)
    print(setting)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(f"{setting}\n\n{table}\n", encoding="utf-8")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"setting": setting, "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
