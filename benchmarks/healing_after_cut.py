"""Healing after the cut: what refitting the block *after* each cut adds to the cut's own fit.

The default healer refits, per cut ``[a, b]``, the down projection of block ``a − 1`` and then the
attention output projection of block ``b + 1`` (``-o healer.after_cut=false`` turns the second
off). This study prunes with ``miprun run``'s default selection and compares, on the same healing
sequences:

* ``before the cut only`` — the down projection of block ``a − 1`` (``after_cut=false``);
* ``miprun run`` — the default: + the attention output projection of block ``b + 1``;
* ``+ down after`` — the default, then, in the study only, the down projection of block ``b + 1``
  refitted in closed form (ridge toward the weights as they are) so that the stream after the
  block equals the dense one (target: dense block output − pruned stream after attention).

Each variant is scored by miprun's perplexity protocol on WikiText-2 test and on the Python code
text of ``method_quality.py`` (a domain the fits never saw). The study's own refit is written for
blocks with a plain residual after the FFN (Llama, Mistral, Qwen2, Phi-3); others are refused.

    python benchmarks/healing_after_cut.py --prune 6 --ppl-windows 40
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from arguments import add_run_arguments  # the arguments every benchmark shares
from method_quality import (
    python_code_corpus,  # the other-domain text, built one way for every benchmark
)

import miprun
from miprun.data.calibration import load_calibration
from miprun.evaluation.perplexity import perplexity
from miprun.healing_fit import cuts_of, fit_rows, module_output, ridge_solver
from miprun.models.loading import load_model


def _module(adapter: Any, index: int, path: str) -> Any:
    return dict(adapter.blocks[index].named_modules())[path]


def capture(adapter: Any, ids: torch.Tensor, index: int, path: str) -> dict[str, torch.Tensor]:
    """Over ``ids`` (batches of 4), float64 rows without each sequence's first token: the stream
    entering block ``index`` (``x``), the input and output of its module ``path`` (``a``, ``z``) and
    the block's output (``out``)."""
    store: dict[str, list[torch.Tensor]] = {"x": [], "a": [], "z": [], "out": []}
    block = adapter.blocks[index]

    def on_input(module, args, kwargs):
        store["x"].append(fit_rows(args[0] if args else kwargs["hidden_states"]))

    def on_module(module, args, out):
        store["a"].append(fit_rows(args[0]))
        store["z"].append(fit_rows(out))

    def on_output(module, args, out):
        store["out"].append(fit_rows(module_output(out)))

    handles = [block.register_forward_pre_hook(on_input, with_kwargs=True),
               _module(adapter, index, path).register_forward_hook(on_module),
               block.register_forward_hook(on_output)]
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[0], 4):
                adapter.backbone(input_ids=ids[start : start + 4], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(value) for key, value in store.items()}


def refit(module: torch.nn.Linear, inputs: torch.Tensor, target: torch.Tensor, ridge: float) -> tuple[float, float]:
    """Replace ``module``'s weight by the ridge fit of ``target`` on ``inputs``; relative residuals
    before and after."""
    prior = module.weight.detach().double().T
    solution = ridge_solver(inputs.T @ inputs, ridge)(inputs.T @ target, prior)
    energy = float(target.pow(2).sum())
    before = (float((inputs @ prior - target).pow(2).sum()) / energy) ** 0.5
    after = (float((inputs @ solution - target).pow(2).sum()) / energy) ** 0.5
    with torch.no_grad():
        module.weight.copy_(solution.T.to(module.weight.dtype))
    return round(before, 4), round(after, 4)


def heal_down_after(pruned: Any, dense: Any, ids: torch.Tensor, blocks: list[int], ridge: float) -> list:
    """Refit the down projection of the block after every cut of ``blocks``, in order; ``pruned``
    and ``dense`` are anything with an ``adapter``."""
    residuals = []
    down_path = pruned.adapter.spec.ffn_output
    for first, last in cuts_of(blocks):
        after = last + 1
        if after >= dense.adapter.num_blocks:
            continue
        index = after - sum(1 for b in blocks if b < after)  # its index in the pruned model
        d = capture(dense.adapter, ids, after, down_path)
        p = capture(pruned.adapter, ids, index, down_path)
        target = d["out"] - (p["out"] - p["z"])
        residuals.append(("down", after, refit(_module(pruned.adapter, index, down_path), p["a"], target, ridge)))
    return residuals


def main() -> None:
    """Print one row per variant: blocks, refits with their residuals, perplexity on two texts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune=6)
    parser.add_argument("--ridge", type=float, default=0.3, help="relative ridge of the refits (the default healer's)")
    parser.add_argument("--heal-samples", type=int, default=128)
    parser.add_argument("--ppl-windows", type=int, default=40)
    args = parser.parse_args()
    dense = load_model(args.model)
    spec = dense.adapter.spec
    if spec.ffn_output_norm or spec.ffn_output not in dict(dense.adapter.blocks[0].named_modules()):
        raise SystemExit(f"this study's down refit is written for blocks with {spec.ffn_output} and no output norms; "
                         f"'{dense.adapter.model_type}' differs")
    common = {"n": args.prune, "calib": args.calib, "num_samples": args.num_samples, "seq_len": args.seq_len,
              "heal_samples": args.heal_samples, "save": False}
    result = miprun.prune(args.model, **common)
    blocks = list(result.report["selected_blocks"])
    before_only = miprun.prune(args.model, options={"healer": {"after_cut": False}}, **common)
    if list(before_only.report["selected_blocks"]) != blocks:  # the selection's preview does not refit after cuts
        raise SystemExit(f"the two runs selected {blocks} and {before_only.report['selected_blocks']}")
    ids = load_calibration(args.calib, dense.tokenizer, num_samples=args.heal_samples, seq_len=args.seq_len,
                           seed=0).input_ids
    code = python_code_corpus(Path(tempfile.mkdtemp(prefix="miprun-after-cut-"))).read_text(encoding="utf-8")
    print(f"blocks removed: {blocks}")
    print("| variant | refits after the cut (relative residual before → after) | WikiText-2 | python code |")
    print("|---|---|---|---|")
    for label, pruned, down in (("before the cut only (after_cut=false)", before_only, False),
                                ("miprun run (+ attention output after)", result, False),
                                ("+ down after (study)", copy.deepcopy(result), True)):
        residuals = [("o_proj", c["after_cut"]["refitted"].split()[1],
                      (round(c["after_cut"]["relative_residual_before"], 4), round(c["after_cut"]["relative_residual_after"], 4)))
                     for c in pruned.report["surgery"]["healing"]["cuts"] if "after_cut" in c]
        if down:
            residuals += heal_down_after(pruned, dense, ids, blocks, args.ridge)
        wiki = perplexity(pruned.model, pruned.tokenizer, "wikitext2", seq_len=512, max_windows=args.ppl_windows)
        other = perplexity(pruned.model, pruned.tokenizer, "python-code", text=code, seq_len=512,
                           max_windows=args.ppl_windows)
        text = "; ".join(f"{part} of block {block}: {a} → {b}" for part, block, (a, b) in residuals) or "—"
        print(f"| {label} | {text} | {wiki.perplexity:.2f} | {other.perplexity:.2f} |", flush=True)


if __name__ == "__main__":
    main()
