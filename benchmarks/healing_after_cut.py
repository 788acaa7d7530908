"""Healing after the cut: what refitting the block *after* each cut adds to the default's healing.

The default healer refits one module per cut, the down projection of the block before it. The
block after the cut also has linear layers whose output is added to the stream: its attention
output projection and its down projection. This study prunes with ``miprun run``'s default (healed),
then refits, on the same healing sequences and in closed form (ridge toward the weights as they
are, relative to the Gram's mean diagonal), for every cut ``[a, b]`` and the block ``b + 1`` after it:

* ``o_proj after`` — the attention output projection of block ``b + 1``, so that the stream after
  its attention equals the dense model's there (target: dense stream after attention − pruned
  stream entering the block);
* ``down after`` — the down projection of block ``b + 1``, so that the stream after the block
  equals the dense one (target: dense block output − pruned stream after attention);
* ``both`` — the first, then the second on the model it left.

Each variant is scored by miprun's perplexity protocol on WikiText-2 test and on the Python code
text of ``method_quality.py`` (a domain the fits never saw). Written for blocks with a plain
residual after attention and after the FFN (Llama, Mistral, Qwen2, Phi-3); others are refused.

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

ATTENTION_OUTPUT = "self_attn.o_proj"


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


def heal_after(pruned: Any, dense: Any, ids: torch.Tensor, blocks: list[int], parts: list[str], ridge: float) -> list:
    """Refit ``parts`` (``o_proj``, ``down``) of the block after every cut of ``blocks``, in order;
    ``pruned`` and ``dense`` are anything with an ``adapter``."""
    residuals = []
    down_path = pruned.adapter.spec.ffn_output
    dense_rows = {}  # the dense model's captures are the same for every part
    for first, last in cuts_of(blocks):
        after = last + 1
        if after >= dense.adapter.num_blocks:
            continue
        index = after - sum(1 for b in blocks if b < after)  # its index in the pruned model
        if after not in dense_rows:
            dense_rows[after] = capture(dense.adapter, ids, after, ATTENTION_OUTPUT)
        d = dense_rows[after]
        for part in parts:
            if part == "o_proj":
                p = capture(pruned.adapter, ids, index, ATTENTION_OUTPUT)
                target = d["x"] + d["z"] - p["x"]
                residuals.append(("o_proj", after, refit(_module(pruned.adapter, index, ATTENTION_OUTPUT), p["a"], target, ridge)))
            else:
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
    if spec.ffn_output_norm or ATTENTION_OUTPUT not in dict(dense.adapter.blocks[0].named_modules()):
        raise SystemExit(f"this study is written for blocks with {ATTENTION_OUTPUT} and no output norms; "
                         f"'{dense.adapter.model_type}' differs")
    result = miprun.prune(args.model, n=args.prune, calib=args.calib, num_samples=args.num_samples,
                          seq_len=args.seq_len, heal_samples=args.heal_samples, save=False)
    blocks = list(result.report["selected_blocks"])
    ids = load_calibration(args.calib, dense.tokenizer, num_samples=args.heal_samples, seq_len=args.seq_len,
                           seed=0).input_ids
    code = python_code_corpus(Path(tempfile.mkdtemp(prefix="miprun-after-cut-"))).read_text(encoding="utf-8")
    print(f"blocks removed: {blocks}")
    print("| variant | refits (relative residual before → after) | WikiText-2 | python code |")
    print("|---|---|---|---|")
    for label, parts in (("healed (miprun run)", []), ("+ o_proj after", ["o_proj"]),
                         ("+ down after", ["down"]), ("+ both", ["o_proj", "down"])):
        pruned = copy.deepcopy(result) if parts else result
        residuals = heal_after(pruned, dense, ids, blocks, parts, args.ridge)
        wiki = perplexity(pruned.model, pruned.tokenizer, "wikitext2", seq_len=512, max_windows=args.ppl_windows)
        other = perplexity(pruned.model, pruned.tokenizer, "python-code", text=code, seq_len=512,
                           max_windows=args.ppl_windows)
        text = "; ".join(f"{part} of block {block}: {a} → {b}" for part, block, (a, b) in residuals) or "—"
        print(f"| {label} | {text} | {wiki.perplexity:.2f} | {other.perplexity:.2f} |", flush=True)


if __name__ == "__main__":
    main()
