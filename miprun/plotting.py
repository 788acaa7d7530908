"""Figures: the pruning curve of ``miprun compare``. matplotlib is an optional extra (``miprun[plot]``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from miprun.errors import MiprunError

DENSE = "dense"
"""The method name of the unpruned model's row in a comparison."""


def require_matplotlib() -> Any:
    """Import matplotlib (Agg backend) or raise a :class:`MiprunError` saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MiprunError(
            "the pruning-curve plot needs matplotlib, an optional extra: pip install 'miprun[plot]' "
            "(or pip install matplotlib); pass --no-plot to get the table only"
        ) from exc
    return plt


def write_curve(report: dict[str, Any], plot: str | Path, dataset: str | None = None) -> tuple[Path, Path]:
    """Plot perplexity against blocks removed, one line per method, with the dense model as a
    dashed line; write the PNG to ``plot`` and the table behind it to ``plot`` with ``.csv``.

    :returns: (PNG path, CSV path).
    """
    dataset = dataset or (report["settings"]["ppl"] or [None])[0]
    if dataset is None:
        raise MiprunError("the pruning curve plots perplexity; evaluate at least one data set (--eval wikitext2)")
    png = Path(plot)
    data = png.with_suffix(".csv")
    rows = [r for r in report["rows"] if r["method"] != DENSE]
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "prune", "blocks", f"ppl_{dataset}", "seconds", "forward_passes", "mi_evaluations"])
        for r in report["rows"]:
            writer.writerow([r["method"], r["prune"], " ".join(map(str, r["blocks"])), r["perplexity"].get(dataset),
                             r["cost"]["seconds"], r["cost"]["forward_passes"], r["cost"]["mi_evaluations"]])
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["prune"], r["perplexity"].get(dataset)) for r in rows if r["method"] == method)
        points = [(x, y) for x, y in points if isinstance(y, (int, float))]
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=method)
    dense = report["rows"][0]["perplexity"].get(dataset)
    if isinstance(dense, (int, float)):
        ax.axhline(dense, color="grey", linestyle="--", linewidth=1, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("blocks removed")
    ax.set_ylabel(f"perplexity ({dataset}, log scale)")
    ax.set_title(f"{report['model'].get('spec', '')}: pruning curve")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png, data
