"""What the healing fit needs: tokens and their source, fit and ridge, sequential against independent cuts.

One selection per study (blocks given with ``--blocks``, or chosen once by ``--method`` at
``--prune``) is healed many ways on fresh copies of the model, and each healed model is scored by
miprun's perplexity protocol on WikiText-2 test and on a text of another domain the fit never saw
(``python-code``: standard-library source, as in ``method_quality.py``); the plain removal of the
same blocks is the reference row. Studies (``--studies``):

* ``samples`` — healing sequences ``--samples`` (×``--seq-len`` tokens) from each ``--sources``
  (the default fit);
* ``fits`` — each ``FIT[:RIDGE]`` of ``--fits`` (``projection``: the down projection refitted,
  ``map``: ReplaceMe's map; the ridge relative to the Gram's mean diagonal, the fit's default
  without one), fitted on 128 sequences of each ``--sources``;
* ``order`` — sequential (each cut on the model healed so far) against independent fits, on a
  selection with several cuts (``--order-method``, default ShortGPT's).

    python benchmarks/healing_study.py --studies samples,fits,order --json study.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from arguments import add_run_arguments  # the arguments every benchmark shares
from method_quality import python_code_corpus  # the other-domain text, built one way for every benchmark

from miprun.contracts import Selection
from miprun.data.calibration import load_calibration
from miprun.engine import execute
from miprun.evaluation.perplexity import perplexity
from miprun.healing import LinearHealer
from miprun.models.loading import load_model
from miprun.plans import resolve_plan
from miprun.surgeons.remove_blocks import RemoveBlocksSurgeon


def main() -> None:
    """Print one row per healing variant; write them as JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, prune=6)
    parser.add_argument("--method", default="mi-prun", help="selection of the samples and ridge studies")
    parser.add_argument("--blocks", help="comma list of blocks instead of --method's selection")
    parser.add_argument("--order-method", default="shortgpt", help="selection (several cuts) of the order study")
    parser.add_argument("--studies", default="samples,fits,order")
    parser.add_argument("--samples", default="32,128,256")
    parser.add_argument("--sources", default="wikitext2,self")
    parser.add_argument("--fits", default="projection:0.01,projection:0.1,projection:0.3,projection:1,map")
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--json")
    args = parser.parse_args()
    loaded = load_model(args.model)
    scratch = Path(tempfile.mkdtemp(prefix="miprun-study-"))
    texts = {"wikitext2": "wikitext2", "python-code": str(python_code_corpus(scratch))}
    calib = load_calibration(args.calib, loaded.tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0,
                             model=loaded.model).input_ids

    def select(method: str) -> list[int]:
        working = copy.deepcopy(loaded)
        return sorted(execute(resolve_plan(method=method, healer="none"), working.model, working.adapter, calib, count=args.prune,
                              tokenizer=loaded.tokenizer).selection.blocks)

    def scores(model: Any) -> dict[str, float]:
        return {name: round(perplexity(model, loaded.tokenizer, text, seq_len=512,
                                       max_windows=args.ppl_windows).perplexity, 2) for name, text in texts.items()}

    sequences: dict[tuple[str, int], Any] = {}

    def heal_ids(source: str, count: int) -> Any:
        if (source, count) not in sequences:
            sequences[(source, count)] = load_calibration(source, loaded.tokenizer, num_samples=count,
                                                          seq_len=args.seq_len, seed=0, model=loaded.model).input_ids
        return sequences[(source, count)]

    rows: list[dict[str, Any]] = []

    def run(study: str, blocks: list[int], label: str, healer: LinearHealer | None, ids: Any) -> None:
        model = copy.deepcopy(loaded)
        start = time.perf_counter()
        summary = healer.heal(model.model, model.adapter, blocks, ids) if healer is not None else None
        seconds = time.perf_counter() - start
        RemoveBlocksSurgeon().apply(model.model, model.adapter, Selection(blocks))
        row = {"study": study, "variant": label, "blocks": blocks, "perplexity": scores(model.model),
               "heal_seconds": round(seconds, 1), "healing": summary}
        reference = next((r for r in rows if r["study"] == study and r["variant"] == "plain"), None)
        if reference is not None:
            row["change"] = {k: round(v / reference["perplexity"][k] - 1, 4) for k, v in row["perplexity"].items()}
        rows.append(row)
        change = "  ".join(f"{k} {v:+.1%}" for k, v in row.get("change", {}).items())
        print(f"{study:<8} {label:<28} " + "  ".join(f"{k} {v:>7.2f}" for k, v in row["perplexity"].items())
              + f"  {change}  heal {seconds:.0f} s", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
        del model

    studies = args.studies.split(",")
    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else select(args.method)
    print(f"blocks {blocks}; perplexity on {', '.join(texts)} (40 × 512 windows)", flush=True)
    if "samples" in studies or "fits" in studies:
        run("samples", blocks, "plain", None, None)
    if "samples" in studies:
        for source in args.sources.split(","):
            for count in (int(c) for c in args.samples.split(",")):
                run("samples", blocks, f"{source} × {count}", LinearHealer(), heal_ids(source, count))
    if "fits" in studies:
        rows.append({**rows[0], "study": "fits"})
        for source in args.sources.split(","):
            for variant in args.fits.split(","):
                fit, _, ridge = variant.partition(":")
                healer = LinearHealer(fit=fit, ridge=float(ridge) if ridge else None)
                run("fits", blocks, f"{source} {fit} ridge {healer.ridge:g}", healer, heal_ids(source, 128))
    if "order" in studies:
        several = select(args.order_method)
        run("order", several, "plain", None, None)
        for sequential in (True, False):
            run("order", several, "sequential" if sequential else "independent", LinearHealer(sequential=sequential),
                heal_ids("wikitext2", 128))


if __name__ == "__main__":
    main()
