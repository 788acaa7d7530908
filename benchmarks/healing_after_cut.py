"""Healing after the cut: what refitting the blocks *after* each cut adds to the cut's own fit.

The default healer refits, per cut ``[a, b]``, the down projection of block ``a − 1`` and then the
attention output projections of the blocks after the cut (``-o healer.after_cut=K``: how many;
0 turns them off). This study prunes with ``miprun run``'s default selection and heals it with
each ``--after-cut`` count on the same healing sequences (the selection does not depend on it: its
preview fits the cut's own projection only). With ``--down-after`` it adds one study row: the
default, then — in the study only — the down projection of block ``b + 1`` refitted in closed form
(ridge toward the weights as they are) so that the stream after that block equals the dense one
(target: dense block output − pruned stream after attention).

Each variant is scored by miprun's perplexity protocol on WikiText-2 test and on the Python code
text of ``method_quality.py`` (a domain the fits never saw), with its healing time. The study's own
down refit is written for blocks with a plain residual after the FFN (Llama, Mistral, Qwen2, Phi-3).

    python benchmarks/healing_after_cut.py --prune 6 --after-cut 0,1,2,3,5 --ppl-windows 40
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

    def rows(hidden: torch.Tensor) -> torch.Tensor:  # this study's fits leave the sink out, as measured
        return fit_rows(hidden[:, 1:])

    def on_input(module, args, kwargs):
        store["x"].append(rows(args[0] if args else kwargs["hidden_states"]))

    def on_module(module, args, out):
        store["a"].append(rows(args[0]))
        store["z"].append(rows(out))

    def on_output(module, args, out):
        store["out"].append(rows(module_output(out)))

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
    """Print one row per variant: refits after the cuts with their residuals, perplexity on two
    texts, healing time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune=6)
    parser.add_argument("--after-cut", default="0,1,2,3", help="comma list of healer.after_cut counts")
    parser.add_argument("--down-after", action="store_true", help="add the study row: the default + down after")
    parser.add_argument("--ridge", type=float, default=0.3, help="relative ridge of the study's down refit")
    parser.add_argument("--heal-samples", type=int, default=128)
    parser.add_argument("--ppl-windows", type=int, default=40)
    args = parser.parse_args()
    dense = load_model(args.model)
    common = {"n": args.prune, "calib": args.calib, "num_samples": args.num_samples, "seq_len": args.seq_len,
              "heal_samples": args.heal_samples, "save": False}
    variants = []
    for count in (int(k) for k in args.after_cut.split(",")):
        result = miprun.prune(args.model, options={"healer": {"after_cut": count}}, **common)
        variants.append((f"after_cut={count}", result, False))
    default = miprun.prune(args.model, **common)
    variants.append(("miprun run (default)", default, False))
    blocks = list(default.report["selected_blocks"])
    if any(list(result.report["selected_blocks"]) != blocks for _, result, _ in variants):
        raise SystemExit("the runs selected different blocks")
    if args.down_after:
        spec = dense.adapter.spec
        if spec.ffn_output_norm or spec.ffn_output not in dict(dense.adapter.blocks[0].named_modules()):
            raise SystemExit(f"the study's down refit is written for blocks with {spec.ffn_output} and no output "
                             f"norms; '{dense.adapter.model_type}' differs")
        variants.append(("default + down after (study)", copy.deepcopy(default), True))
    ids = load_calibration(args.calib, dense.tokenizer, num_samples=args.heal_samples, seq_len=args.seq_len,
                           seed=0).input_ids
    code = python_code_corpus(Path(tempfile.mkdtemp(prefix="miprun-after-cut-"))).read_text(encoding="utf-8")
    print(f"blocks removed: {blocks}")
    print("| variant | refits after the cuts (relative residual before → after) | WikiText-2 | python code | heal (s) |")
    print("|---|---|---|---|---|")
    for label, pruned, down in variants:
        residuals = [("o_proj", after["refitted"].split()[1],
                      (round(after["relative_residual_before"], 4), round(after["relative_residual_after"], 4)))
                     for c in pruned.report["surgery"]["healing"]["cuts"] for after in c.get("after_cut", [])]
        if down:
            residuals += heal_down_after(pruned, dense, ids, blocks, args.ridge)
        wiki = perplexity(pruned.model, pruned.tokenizer, "wikitext2", seq_len=512, max_windows=args.ppl_windows)
        other = perplexity(pruned.model, pruned.tokenizer, "python-code", text=code, seq_len=512,
                           max_windows=args.ppl_windows)
        text = "; ".join(f"{part} of block {block}: {a} → {b}" for part, block, (a, b) in residuals) or "—"
        heal = pruned.report.get("timings", {}).get("heal")
        print(f"| {label} | {text} | {wiki.perplexity:.2f} | {other.perplexity:.2f} | "
              f"{'' if heal is None or down else round(heal, 1)} |", flush=True)


if __name__ == "__main__":
    main()
