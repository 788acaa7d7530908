"""Uniform against per-layer FFN widths at the same neuron count: does a uniform ratio waste quality?

miprun's width pruning keeps the same number of neurons in every FFN layer, because stock
``transformers`` configs of the families it prunes read one ``intermediate_size``. This script
measures what that costs. On the width default's inputs (``ffn-activations`` on 16 × 256 WikiText-2
calibration tokens, FLAP's fluctuation score ``Var(a_j) · ‖W_down[:, j]‖²``) it removes the same total
number of neurons two ways:

* ``uniform``: the lowest-scoring ``ratio`` of every layer (what ``miprun run --granularity neuron``
  removes);
* ``per-layer``: FLAP's adaptive allocation — each layer's scores standardised (minus their mean,
  over their standard deviation), the lowest across all layers removed, at least one neuron kept per
  layer;

heals both with the width default healer (``neuron-linear`` on 128 × 256 healing tokens, accepting
unequal widths), masks the removed neurons out (``masked_neurons``: the model slicing would give;
exactly so for the uniform case) and prints WikiText-2 perplexity (miprun's protocol, the first
``--max-windows`` windows of ``--eval-seq-len`` tokens) with the per-layer widths' range.

    MIPRUN_DATA_DIR=../shared/data python benchmarks/neuron_widths.py --ratio 0.2,0.3
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch


def allocations(scores: list[torch.Tensor], ratio: float) -> dict[str, dict[int, list[int]]]:
    """Kept neurons per layer for the uniform and the per-layer (standardised, global) removal of
    the same total count; ``scores[i]`` is layer ``i``'s per-neuron score (higher: keep)."""
    widths = [len(s) for s in scores]
    removed_each = round(ratio * widths[0])
    uniform = {layer: sorted(torch.argsort(s, descending=True)[: len(s) - removed_each].tolist())
               for layer, s in enumerate(scores)}
    standard = [(s - s.mean()) / s.std().clamp_min(1e-12) for s in scores]
    for s in standard:
        s[torch.argmax(s)] = float("inf")  # every layer keeps its best neuron
    flat = torch.cat(standard)
    owner = torch.cat([torch.full((w,), layer) for layer, w in enumerate(widths)])
    offset = torch.tensor([0, *torch.cumsum(torch.tensor(widths), 0).tolist()[:-1]])
    kept = torch.argsort(flat, descending=True)[: sum(widths) - removed_each * len(widths)]
    per_layer: dict[int, list[int]] = {layer: [] for layer in range(len(widths))}
    for index in kept.tolist():
        layer = int(owner[index])
        per_layer[layer].append(index - int(offset[layer]))
    return {"uniform": uniform, "per-layer": {layer: sorted(k) for layer, k in per_layer.items()}}


def main() -> None:
    """Measure and print one row per ratio and allocation (JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", default="0.2", help="comma list of ratios")
    parser.add_argument("--heal-samples", type=int, default=128)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from miprun.contracts import NeuronSelection
    from miprun.data.calibration import load_calibration
    from miprun.evaluation import evaluate
    from miprun.models.loading import load_model
    from miprun.models.neuron_masks import masked_neurons
    from miprun.plans import resolve_plan
    from miprun.registry import get_registry
    from miprun.selectors.neuron_ranking import down_columns, output_energy

    registry = get_registry()
    loaded = load_model(args.model)
    strategies = resolve_plan(registry=registry, granularity="neuron").build(registry)
    calib = load_calibration("wikitext2", loaded.tokenizer, num_samples=16, seq_len=256, seed=0)
    heal_ids = load_calibration("wikitext2", loaded.tokenizer, num_samples=args.heal_samples, seq_len=256, seed=0).input_ids
    acts = strategies["collector"].collect(loaded.model, loaded.adapter, calib.input_ids)
    scores = [output_energy(acts.acts[position], down_columns(loaded.adapter, layer), centred=True)  # FLAP's score
              for position, layer in enumerate(acts.layers)]
    rows = []
    for ratio in [float(r) for r in args.ratio.split(",")]:
        for name, keep in allocations(scores, ratio).items():
            start = time.perf_counter()
            working = copy.deepcopy(loaded)
            strategies["healer"].heal(working.model, working.adapter, NeuronSelection(keep=keep), heal_ids)
            seconds = time.perf_counter() - start
            with masked_neurons(working.adapter, keep):
                report = evaluate(working.model, working.tokenizer, ppl=("wikitext2",), seq_len=args.eval_seq_len,
                                  max_windows=args.max_windows, progress=False)
            widths = [len(k) for k in keep.values()]
            rows.append({"ratio": ratio, "allocation": name, "kept_neurons": sum(widths), "min_width": min(widths),
                         "max_width": max(widths), "widths": widths,
                         "ppl": report["perplexity"]["wikitext2"]["perplexity"], "heal_seconds": round(seconds, 1)})
            r = rows[-1]
            print(f"ratio {ratio}  {name:<10} kept {r['kept_neurons']}  widths {r['min_width']}–{r['max_width']}  "
                  f"WikiText-2 {r['ppl']:.2f}", flush=True)
            del working
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
