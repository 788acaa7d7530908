"""The Hugging Face model card (``README.md``) every saved checkpoint carries, written from its report.

YAML front matter (``base_model`` when the source is a hub model, ``library_name: transformers``,
``tags`` with ``pruned`` and ``miprun``, ``pipeline_tag``) and a Markdown body: the method, every
strategy with its effective options, what was removed, parameters before and after, calibration
data and seed, the evaluation figures when the run evaluated, and how to load and rerun it. Built
with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard`, so it round-trips through
``ModelCard.load``.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from miprun import __version__


def _base_model(source: dict[str, Any]) -> str | None:
    """The hub id of the source model, when there is one."""
    if source.get("kind") == "hub":
        return str(source.get("spec"))
    return source.get("hub_id")


def _removed(report: dict[str, Any]) -> str:
    if report.get("granularity") == "neuron":
        prune = report.get("prune", {})
        return (f"{prune.get('neurons_per_layer')} FFN neurons from each of {prune.get('layers')} layers "
                f"(width {prune.get('of_width')} → {prune.get('of_width', 0) - prune.get('neurons_per_layer', 0)})")
    blocks = report.get("selected_blocks", [])
    return f"blocks {blocks} ({len(blocks)} of {report.get('prune', {}).get('of_blocks')}, 0-based, original numbering)"


def _evaluation_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, value in report.get("evaluation", {}).get("perplexity", {}).items():
        value = value.get("perplexity") if isinstance(value, dict) else value
        lines.append(f"| perplexity {name} | {value:.2f} |" if isinstance(value, float) else f"| perplexity {name} | {value} |")
    return lines


def model_card(report: dict[str, Any]) -> ModelCard:
    """The model card of a pruned checkpoint, from its ``miprun_report.json`` content."""
    source = report.get("model", {})
    base = _base_model(source)
    granularity = report.get("granularity", "block")
    data = ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["pruned", "miprun", f"{granularity}-pruning"],
    )
    surgery = report.get("surgery", {})
    strategies = report.get("strategies", {})
    calibration = report.get("data", {})
    rows = [f"| {kind} | `{s.get('name')}` | {s.get('why', 'named')} | `{json.dumps(s.get('options', {}), default=str)}` |"
            for kind, s in strategies.items()]
    lines = [
        f"# {source.get('spec', 'model')} pruned with miprun ({report.get('method', '')})",
        "",
        f"This checkpoint is **{source.get('spec')}**"
        + (f" ([{base}](https://huggingface.co/{base}))" if base else "")
        + f" with {_removed(report)} removed by miprun {__version__}, "
        "without any training. It loads with stock `transformers`:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        "```",
        "",
        "## How it was pruned",
        "",
        f"- method: `{report.get('method')}` ({granularity} granularity)",
        f"- removed: {_removed(report)}",
    ]
    if "parameters_before" in surgery:
        lines.append(f"- parameters: {surgery['parameters_before']:,} → {surgery['parameters_after']:,}")
    healing = surgery.get("healing") or {}
    if healing.get("cuts"):
        modules = [c["folded_into"] for c in healing["cuts"] if c.get("folded_into")]
        modules += [after["refitted"] for c in healing["cuts"] for after in c.get("after_cut", [])]
        if modules:
            lines.append(f"- healed without training: {len(modules)} closed-form fit(s) "
                         f"({', '.join(modules)}) on {healing.get('tokens')} tokens{_products(healing)}")
        lines += [f"- blocks {c['blocks'][0]}–{c['blocks'][-1]}: no fit of their own ({c['not_fitted']})"
                  for c in healing["cuts"] if c.get("not_fitted")]
    elif healing.get("layers"):
        lines.append(f"- healed without training: the down projection of {len(healing['layers'])} FFN layer(s) "
                     f"refitted in closed form on the neurons each keeps, on {healing.get('tokens')} tokens"
                     f"{_products(healing)}")
    elif healing.get("skipped"):
        lines.append(f"- {healing['skipped']}")
    preview = report.get("selection", {}).get("info", {}).get("heal_preview")
    if preview:
        lines.append(f"- chosen for the healed model: every candidate set was scored after healing "
                     f"(fits on {preview['fit_sequences']} healing sequences the scores did not read)")
    lines += [
        f"- calibration: {calibration.get('name')} ({calibration.get('kind', '')}), {calibration.get('num_samples')} × "
        f"{calibration.get('seq_len')} tokens, seed {report.get('seed')}",
        "",
        "| kind | strategy | why | options |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    quality = report.get("quality")
    if quality:
        from miprun.quality import summary_line

        held_out = quality.get("data", {}).get("held_out")
        apart = ("which share no token with the text selection and healing read" if held_out is None
                 or held_out["disjoint"] == held_out["windows"] else
                 f"only {held_out['disjoint']} of which share no token with the text selection and healing read: "
                 f"the source is small, so the check is optimistic")
        lines += ["## Quality check", "", f"{summary_line(quality)} (windows drawn from the calibration source "
                  f"with seed {report.get('seed', 0) + 1}, {apart}).", ""]
        if "warning" in quality:
            lines += [f"**Warning:** {quality['warning']}.", ""]
        from miprun.heal_guard import held_out_line

        healing_check = held_out_line(report.get("surgery", {}).get("healing") or {})
        if healing_check:
            lines += [f"Healing, on the same windows: {healing_check}.", ""]
    evaluation = _evaluation_lines(report)
    if evaluation:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|", *evaluation, ""]
    lines += [
        "## Reproduce",
        "",
        "`miprun_report.json` beside the weights records everything the run used (versions included);",
        "`miprun run --from-report miprun_report.json --output DIR` reruns it.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _products(healing: dict) -> str:
    """What the fit's multiplications took (the healer's ``products``), where the report says."""
    return f" (products: {healing['products']})" if healing.get("products") else ""
