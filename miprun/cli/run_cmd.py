"""``miprun run``: prune a model by composing the five strategy kinds by name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from miprun.cli.console import err, out, print_json, progress_reporter
from miprun.models.embedded import DEFAULT_MODEL, MODEL_HELP


def run(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = DEFAULT_MODEL,
    calib: Annotated[str, typer.Option(help="wikitext2, c4, ptb, alpaca, self, or a .txt/.jsonl/.json/.csv/.parquet file (text, chat or instruction rows)")] = "wikitext2",
    prune: Annotated[Optional[int], typer.Option("--prune", "-n", help="Number of blocks (neuron granularity: FFN neurons per layer) to remove")] = None,
    ratio: Annotated[Optional[float], typer.Option(help="Fraction of blocks (neuron granularity: of each FFN's neurons) to remove (default 0.2)")] = None,
    granularity: Annotated[str, typer.Option(help="What to remove: block (depth) or neuron (FFN width)")] = "block",
    method: Annotated[Optional[str], typer.Option(help="Named method (mi-prun, shortgpt, sleb, …) or SCORER[:ESTIMATOR]+SELECTOR[+SURGEON]; --scorer etc. override its parts")] = None,
    num_samples: Annotated[int, typer.Option(help="Calibration sequences")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration sequence")] = 256,
    seed: Annotated[int, typer.Option(help="Seed for data sampling and every seeded strategy")] = 0,
    collector: Annotated[Optional[str], typer.Option(help="Collector (default hidden-states; neuron: ffn-activations)")] = None,
    estimator: Annotated[Optional[str], typer.Option(help="MI estimator; naming one alone selects the MI scorer block-mi (neuron: neuron-mi)")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="Scorer (default: the selector's declared partner, else output-mi; neuron: neuron-mi)")] = None,
    selector: Annotated[Optional[str], typer.Option(help="Selector (default: the scorer's declared partner, else set-exchange; neuron: neuron-flap)")] = None,
    surgeon: Annotated[Optional[str], typer.Option(help="Surgeon (default remove-blocks, laco for the laco selector; neuron: slice-ffn)")] = None,
    option: Annotated[list[str], typer.Option("--option", "-o", help="Strategy option KIND.KEY=VALUE, repeatable")] = [],
    output: Annotated[Optional[Path], typer.Option(help="Checkpoint directory (default pruned/<model>-...)")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous miprun output directory (atomically; only one holding miprun_report.json)")] = False,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16")] = "auto",
    device_map: Annotated[Optional[str], typer.Option(help="accelerate device map, e.g. auto")] = None,
    eval_ppl: Annotated[Optional[str], typer.Option("--eval", help="Evaluate perplexity after pruning on these sets, e.g. wikitext2")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout")] = False,
    heal: Annotated[Optional[str], typer.Option(help="Healer, on by default where the plan removes whole blocks: 'linear' (default) refits the down projection before each cut in closed form; 'replaceme' folds ReplaceMe's hidden×hidden map there; 'none' for plain removal (docs/healing.md)")] = None,
    heal_samples: Annotated[int, typer.Option(help="Calibration sequences the healing fit reads (same source, length and seed)")] = 128,
    heal_candidates: Annotated[int, typer.Option(help="Heal-aware selection: heal the selection and the next best block sets the scorer evaluated (this many in all) and keep the one that heals best")] = 1,
    layerwise: Annotated[bool, typer.Option("--layerwise", help="Run block by block from the checkpoint's safetensors files: memory for the embedding, the head and one block (docs/architecture.md)")] = False,
    max_memory: Annotated[Optional[str], typer.Option(help="Memory budget, e.g. 200MiB or 40GB: a model whose weights exceed it runs layer-wise")] = None,
    device: Annotated[Optional[str], typer.Option(help="Device the model computes on: cpu, cuda, cuda:1 (layer-wise: where each block runs)")] = None,
    from_report: Annotated[Optional[Path], typer.Option("--from-report", help="Rerun the run a miprun_report.json (or its directory) records; only --output, --overwrite, --eval and --json may be added")] = None,
) -> None:
    """Prune a model and save a checkpoint that transformers loads, with miprun_report.json beside it."""
    from miprun.options import parse_options
    from miprun.pipeline import prune as run_pipeline

    evaluate = {"ppl": tuple(eval_ppl.split(","))} if eval_ppl else None
    if from_report is not None:
        given = {"model": model != DEFAULT_MODEL, "calib": calib != "wikitext2", "prune": prune is not None,
                 "ratio": ratio is not None, "granularity": granularity != "block", "method": method is not None,
                 "num-samples": num_samples != 16, "seq-len": seq_len != 256, "seed": seed != 0,
                 "collector": collector is not None, "estimator": estimator is not None, "scorer": scorer is not None,
                 "selector": selector is not None, "surgeon": surgeon is not None, "option": bool(option),
                 "dtype": dtype != "auto", "device-map": device_map is not None, "heal": heal is not None,
                 "heal-samples": heal_samples != 128, "heal-candidates": heal_candidates != 1, "layerwise": layerwise, "max-memory": max_memory is not None,
                 "device": device is not None}
        arguments = rerun_arguments(from_report, [flag for flag, set_ in given.items() if set_])
    else:
        arguments = dict(model=model, n=prune, ratio=ratio, calib=calib, num_samples=num_samples, seq_len=seq_len,
                         seed=seed, granularity=granularity, method=method, collector=collector, estimator=estimator,
                         scorer=scorer, selector=selector, surgeon=surgeon, options=parse_options(option),
                         dtype=dtype, device_map=device_map, heal=heal, heal_samples=heal_samples,
                         heal_candidates=heal_candidates, layerwise=layerwise, max_memory=max_memory, device=device)
    with progress_reporter() as reporter:
        result = run_pipeline(output=output, overwrite=overwrite, evaluate=evaluate, reporter=reporter, **arguments)
    report = result.report
    if json_output:
        print_json(report)
        return
    if report.get("granularity") == "neuron":
        _print_neuron_run(result)
        return
    table = Table(title="miprun run", show_header=False)
    table.add_row("model", str(report["model"]["spec"]))
    _add_strategies(table, report)
    table.add_row("removed blocks", f"{report['selected_blocks']} ({len(report['selected_blocks'])} of {report['prune']['of_blocks']})")
    surgery = report["surgery"]
    if "parameters_before" in surgery:
        table.add_row("parameters", f"{surgery['parameters_before']:,} → {surgery['parameters_after']:,}")
    preview = report["selection"]["info"].get("heal_preview")
    if preview:
        table.add_row("chosen for", f"the healed model: every set scored after healing ({preview['cuts_fitted']} cuts "
                                    f"fitted on {preview['fit_sequences']} healing sequences the scores did not read)")
    aware = report["selection"]["info"].get("heal_aware")
    if aware:
        rows = {tuple(r["candidate"]): r for r in aware["candidates"]}
        kept = rows[tuple(report["selected_blocks"])]
        table.add_row("heal-aware", f"kept {kept['candidate']} of {len(rows)} candidates (held-out perplexity after healing "
                                    f"{kept['healed_perplexity']:.2f}; the selector's {aware['selected_before']}: "
                                    f"{rows[tuple(aware['selected_before'])]['healed_perplexity']:.2f})")
    if "healer" not in report["strategies"]:
        table.add_row("healing", report.get("healing_reason") or "none")
    elif surgery.get("healing", {}).get("skipped"):
        table.add_row("healing", surgery["healing"]["skipped"])
    for cut in surgery.get("healing", {}).get("cuts", []):
        table.add_row(f"healed {cut['blocks'][0]}–{cut['blocks'][-1]}",
                      f"residual {cut['relative_residual_before']:.3f} → {cut['relative_residual_after']:.3f}, "
                      + (f"not fitted: {cut['not_fitted']}" if cut.get("not_fitted")
                         else f"{cut['folded_into']} refitted" if cut["fit"] == "projection" else f"map folded into {cut['folded_into']}")
                      + (" (head untied)" if cut["untied_head"] else "")
                      + "".join(f"; {after['refitted']} refitted after the cut, residual "
                                f"{after['relative_residual_before']:.3f} → {after['relative_residual_after']:.3f}"
                                for after in cut.get("after_cut", [])))
    _add_quality(table, report)
    table.add_row("span evaluations", str(report["evaluations"]["spans"]))
    execution = report.get("execution", {})
    if execution.get("mode") == "layerwise":
        table.add_row("execution", f"layer-wise ({execution['reason']})")
    table.add_row("timings (s)", ", ".join(f"{k} {v:.2f}" for k, v in report["timings"].items()))
    if "evaluation" in report:
        for name, value in report["evaluation"].get("perplexity", {}).items():
            table.add_row(f"perplexity {name}", f"{value:.2f}" if isinstance(value, float) else str(value))
    table.add_row("saved to", str(result.output))
    out.print(table)
    _print_caveats(report)
    err.print(f"load it with AutoModelForCausalLM.from_pretrained('{result.output}')")


def _add_quality(table: Table, report: dict) -> None:
    """The quality check's row, and the healed model against plain removal on the same windows."""
    from miprun.heal_guard import held_out_line
    from miprun.quality import summary_line

    if "quality" in report:
        table.add_row("quality check", summary_line(report["quality"]))
    healing = report["surgery"].get("healing") or {}
    line = held_out_line(healing)
    if line and not healing.get("skipped"):  # an undone healing says both figures in its own row
        table.add_row("healing check", line)


def rerun_arguments(path: Path, conflicting: list[str]) -> dict:
    """The :func:`miprun.prune` arguments a report's ``rerun`` section records; a one-line error
    for a report without one or for flags that would change the run."""
    from miprun.errors import MiprunError
    from miprun.output import load_report

    if conflicting:
        raise MiprunError(f"--from-report replays the recorded run; drop --{', --'.join(conflicting)} "
                          f"(only --output, --overwrite, --eval and --json may be added)")
    import inspect

    from miprun.pipeline import prune

    recorded = load_report(path).get("rerun")
    if not isinstance(recorded, dict) or "model" not in recorded:
        raise MiprunError(f"the report '{path}' records no rerun section (written by an older miprun?); "
                          f"rerun with the flags its 'strategies', 'data' and 'seed' show")
    accepted = set(inspect.signature(prune).parameters) - {"output", "save", "overwrite", "evaluate", "reporter"}
    whole = ("n", "num_samples", "seq_len", "seed", "heal_samples", "heal_candidates")
    damaged = sorted(set(recorded) - accepted) + [
        key for key, value in recorded.items() if key in accepted and not (
            (isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())) if key == "options"
            else (isinstance(value, int) and not isinstance(value, bool)) if key in whole
            else isinstance(value, float) if key == "ratio"
            else isinstance(value, bool) if key == "layerwise"
            else isinstance(value, str)) and value is not None]
    if damaged:
        raise MiprunError(f"the rerun section of '{path}' is damaged ({', '.join(damaged)}); "
                          f"rerun with the flags its 'strategies', 'data' and 'seed' show")
    return dict(recorded)


def _print_caveats(report: dict) -> None:
    """One ``note:`` line per strategy of the run that declared a known limit."""
    for kind, described in report["strategies"].items():
        if described.get("caveat"):
            err.print(f"note: {kind} {described['name']}: {described['caveat']}")


def _add_strategies(table: Table, report: dict) -> None:
    """One row per strategy of the run: its name and why the plan chose it."""
    for kind, described in report["strategies"].items():
        why = described.get("why", "named")
        table.add_row(kind, described["name"] + ("" if why == "named" else f"  ({why})"))


def _perplexity_value(value: object) -> str:
    if isinstance(value, dict):
        value = value.get("perplexity")
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _print_neuron_run(result) -> None:
    """The summary table of a neuron-granularity run (surgery figures as far as the surgeon reports them)."""
    report = result.report
    surgery, prune, scores = report["surgery"], report["prune"], report["neuron_scores"]
    table = Table(title="miprun run --granularity neuron", show_header=False)
    table.add_row("model", str(report["model"]["spec"]))
    _add_strategies(table, report)
    width = f"{prune['of_width']} → {prune['of_width'] - prune['neurons_per_layer']}"
    table.add_row("FFN width", f"{width} ({prune['neurons_per_layer']} removed from each of {prune['layers']} layers"
                               + (f", {surgery['config_field']})" if "config_field" in surgery else ")"))
    if "parameters_before" in surgery:
        table.add_row("parameters", f"{surgery['parameters_before']:,} → {surgery['parameters_after']:,}")
    if "relative_flops" in surgery:
        table.add_row("relative FLOPs", f"{surgery['relative_flops']:.3f} (FFN {surgery['relative_ffn_flops']:.3f})")
    healing = surgery.get("healing")
    if healing and healing.get("layers"):
        layers = healing["layers"]
        before = sum(r["relative_residual_before"] for r in layers) / len(layers)
        after = sum(r["relative_residual_after"] for r in layers) / len(layers)
        table.add_row("healing", f"{len(layers)} down projections refitted on their kept neurons, mean residual "
                                 f"{before:.3f} → {after:.3f}" + (" (with intercept)" if healing.get("intercept") else ""))
    elif healing and healing.get("skipped"):
        table.add_row("healing", healing["skipped"])
    else:
        table.add_row("healing", report.get("healing_reason") or "none")
    _add_quality(table, report)
    if scores.get("mean_seconds_per_layer") is not None:
        table.add_row("estimate s/layer", f"{scores['mean_seconds_per_layer']:.2f} ({scores['metric']})")
    table.add_row("timings (s)", ", ".join(f"{k} {v:.2f}" for k, v in report["timings"].items()))
    if "evaluation" in report:
        for name, value in report["evaluation"].get("perplexity", {}).items():
            table.add_row(f"perplexity {name}", _perplexity_value(value))
    table.add_row("saved to", str(result.output))
    out.print(table)
    _print_caveats(report)
    if result.output is not None:
        err.print(f"load it with AutoModelForCausalLM.from_pretrained('{result.output}')")
