"""Peak memory of ``miprun run`` in memory, layer-wise and under accelerate's offload, same plan.

Each mode runs in a fresh interpreter (this script re-invoked with ``--child MODE``), so peaks do
not mix. A child notes its resident set right after ``import torch`` (the bare interpreter) and
reports its lifetime peak (``ru_maxrss``), the run's seconds and selection, and on a GPU the peak
device memory. Modes:

* ``fixed`` — everything a run does except holding or running weights: libraries, tokenizer, the
  model's skeleton on the meta device, the calibration windows. Its peak is the cost no execution
  mode can avoid (the tokenizer alone is ~90 MB for SmolLM2's 49 k vocabulary).
* ``in-memory`` — ``miprun.prune`` as ``miprun run`` runs it.
* ``layerwise`` — ``miprun.prune(..., layerwise=True)``: blocks read from the safetensors files.
* ``offload`` — the model loaded by accelerate with ``device_map="auto"`` and a CPU budget that
  leaves the blocks on disk (``offload_folder``), then the same ``miprun.prune``.

The layer-wise bound printed is the issue's: embedding (and untied head) + one block + one
calibration stream (n × L × hidden in the run's dtype), plus 10 %, against the peak above three
baselines: the bare interpreter; the ``fixed`` run's peak (which is its tokenization spike, so
this difference can understate); and the ``fixed`` run's settled resident set once the spike is
freed (which counts all the execution adds: weights, streams and the scorer's working memory).

    python benchmarks/memory.py [--model smollm2-135m] [--prune 6] [--modes fixed,in-memory,layerwise,offload] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arguments import add_run_arguments  # the arguments every benchmark shares

def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        import os

        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def child(mode: str, args: argparse.Namespace) -> dict:
    """Run one mode in this interpreter and return its measurements."""
    import torch

    bare = _rss_mb()
    import miprun  # noqa: F401  (the libraries every mode imports)
    from miprun.pipeline import prune

    result: dict = {"mode": mode, "bare_interpreter_mb": round(bare, 1)}
    start = time.perf_counter()
    common = dict(n=args.prune, num_samples=args.num_samples, seq_len=args.seq_len, calib=args.calib)
    with tempfile.TemporaryDirectory(prefix="miprun-memory-") as tmp:
        output = Path(tmp) / "out"
        if mode == "fixed":
            from accelerate import init_empty_weights
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

            from miprun.data.calibration import load_calibration
            from miprun.memory import release_freed_memory
            from miprun.models.layerwise import checkpoint_directory

            directory = checkpoint_directory(args.model)
            tokenizer = AutoTokenizer.from_pretrained(directory)
            with init_empty_weights():
                skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
            load_calibration(args.calib, tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0,
                             model=skeleton)
            release_freed_memory()
            result["settled_mb"] = round(_rss_mb(), 1)
        elif mode == "offload":
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from miprun.models.adapters import adapter_for
            from miprun.models.layerwise import checkpoint_directory
            from miprun.models.loading import LoadedModel

            directory = checkpoint_directory(args.model)
            model = AutoModelForCausalLM.from_pretrained(
                directory, device_map="auto", max_memory={"cpu": args.offload_cpu}, offload_folder=str(Path(tmp) / "offload"))
            loaded = LoadedModel(model.eval(), AutoTokenizer.from_pretrained(directory), adapter_for(model),
                                 {"spec": args.model, "kind": "offload"})
            run = prune(loaded, output=output, save=False, **common)
            result["selection"] = run.selection.blocks
        else:
            run = prune(args.model, output=output, layerwise=mode == "layerwise", device=args.device,
                        dtype=args.dtype, **common)
            result["selection"] = run.selection.blocks
            result["execution"] = run.report["execution"]
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["peak_mb"] = round(_peak_mb(), 1)
    if torch.cuda.is_available():
        result["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def budget_parts(args: argparse.Namespace) -> dict[str, float]:
    """The issue's layer-wise bound, from the checkpoint's headers (nothing loaded): embedding and
    head, the largest block, one calibration stream, in MB, and their sum plus 10 %."""
    import torch
    from transformers import AutoConfig

    from miprun.models.checkpoint_files import CheckpointTensors
    from miprun.models.layerwise import checkpoint_directory

    directory = checkpoint_directory(args.model)
    config = AutoConfig.from_pretrained(directory)
    elements = CheckpointTensors(directory).elements()
    size = torch.empty((), dtype=getattr(torch, args.dtype) if args.dtype != "auto" else torch.float32).element_size()
    blocks: dict[str, int] = {}
    outside = 0
    for name, count in elements.items():
        parts = name.split(".")
        index = next((i for i, part in enumerate(parts[:-1]) if part.isdigit()), None)
        if index is None:
            outside += count
        else:
            key = ".".join(parts[: index + 1])
            blocks[key] = blocks.get(key, 0) + count
    stream = args.num_samples * args.seq_len * config.hidden_size
    parts = {"embedding_and_head_mb": outside * size / 2**20, "one_block_mb": max(blocks.values()) * size / 2**20,
             "calibration_stream_mb": stream * size / 2**20}
    parts["bound_mb"] = 1.1 * sum(parts.values())
    return {k: round(v, 1) for k, v in parts.items()}


def main() -> None:
    """Run every mode in its own interpreter and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune=6)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None, help="cpu or cuda (in-memory and layer-wise modes)")
    parser.add_argument("--offload-cpu", default="150MiB", help="accelerate's CPU budget in the offload mode")
    parser.add_argument("--modes", default="fixed,in-memory,layerwise,offload")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    rows = []
    for mode in args.modes.split(","):
        argv = [sys.executable, __file__, "--child", mode] + [
            a for key in ("model", "calib", "num_samples", "seq_len", "prune", "dtype", "offload_cpu")
            for a in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
        if args.device:
            argv += ["--device", args.device]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"mode": mode, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    parts = budget_parts(args)
    fixed = next((r for r in rows if r["mode"] == "fixed" and "peak_mb" in r), None)
    memory = next((r for r in rows if r["mode"] == "in-memory" and "peak_mb" in r), None)
    print(f"model {args.model}, {args.num_samples} × {args.seq_len} tokens, remove {args.prune}")
    print(f"layer-wise bound: embedding+head {parts['embedding_and_head_mb']} MB + one block {parts['one_block_mb']} MB"
          f" + stream {parts['calibration_stream_mb']} MB, +10 % = {parts['bound_mb']} MB")
    print(f"{'mode':<10} {'peak MB':>8} {'above bare':>10} {'above fixed':>11} {'above settled':>13} {'seconds':>8} "
          f"{'time ×':>7}  selection")
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:<10} error: {row['error']}")
            continue
        above_bare = row["peak_mb"] - row["bare_interpreter_mb"]
        above_fixed = row["peak_mb"] - fixed["peak_mb"] if fixed else float("nan")
        above_settled = row["peak_mb"] - fixed["settled_mb"] if fixed else float("nan")
        ratio = row["seconds"] / memory["seconds"] if memory else float("nan")
        row.update(above_bare_mb=round(above_bare, 1), above_fixed_mb=round(above_fixed, 1),
                   above_settled_mb=round(above_settled, 1), time_ratio=round(ratio, 2))
        device = f"  device peak {row['peak_device_mb']} MB" if "peak_device_mb" in row else ""
        print(f"{row['mode']:<10} {row['peak_mb']:>8.1f} {above_bare:>10.1f} {above_fixed:>11.1f} {above_settled:>13.1f} "
              f"{row['seconds']:>8.1f} {ratio:>7.2f}  {row.get('selection', '')}{device}")
    layered = next((r for r in rows if r["mode"] == "layerwise" and "peak_mb" in r), None)
    if layered and memory:
        verdicts = ", ".join(
            f"above {name} {layered[key]} MB: {'met' if layered[key] <= parts['bound_mb'] else 'NOT met'}"
            for name, key in (("bare", "above_bare_mb"), ("fixed peak", "above_fixed_mb"),
                              ("fixed settled", "above_settled_mb")) if key in layered)
        print(f"layer-wise against the bound {parts['bound_mb']} MB — {verdicts}; in-memory above bare "
              f"{memory['above_bare_mb']} MB; same selection: {layered.get('selection') == memory.get('selection')}")
    if args.json:
        print(json.dumps({"bound": parts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
