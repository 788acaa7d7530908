"""Figures: the pruning curve of ``miprun compare`` and the span scores of ``miprun scores``.

matplotlib is a dependency of miprun; the import is deferred so that commands without pictures stay fast."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

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
            "plots need matplotlib, which miprun depends on but this environment lacks: pip install "
            "matplotlib (or reinstall miprun); leave out --plot to get the table only"
        ) from exc
    return plt


def check_plot_path(path: Path, flag: str = "--plot", sources: Sequence[Path] = ()) -> None:
    """Fail before any work when ``path`` is not a picture matplotlib can write (by its suffix:
    .png, .pdf, .svg …) or could never be written, or lies among the run's ``sources``
    (:func:`~miprun.output.check_file_output`)."""
    from miprun.output import check_file_output

    require_matplotlib()  # its one-line refusal where matplotlib is missing
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in kinds:
        raise MiprunError(f"{flag} '{path}' is not a picture file matplotlib writes; end it with .png (or "
                          f"{', '.join('.' + kind for kind in sorted(kinds) if kind in ('pdf', 'svg', 'jpg'))})")
    check_file_output(path, flag, sources)


def write_curve(report: dict[str, Any], plot: str | Path, dataset: str | None = None) -> tuple[Path, Path]:
    """Plot perplexity against blocks removed, one line per method, with the dense model as a
    dashed line; write the PNG to ``plot`` and the table behind it to ``plot`` with ``.csv``.

    :returns: (PNG path, CSV path).
    """
    dataset = dataset or (report["settings"]["ppl"] or [None])[0]
    if dataset is None:
        raise MiprunError("the pruning curve plots perplexity; evaluate at least one data set (--eval wikitext2)")
    from miprun.output import write_file_atomically

    png = Path(plot)
    data = png.with_suffix(".csv")
    rows = [r for r in report["rows"] if r["method"] != DENSE]

    def write_table(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["method", "prune", "blocks", f"ppl_{dataset}", "seconds", "forward_passes", "mi_evaluations"])
            for r in report["rows"]:
                writer.writerow([r["method"], r["prune"], " ".join(map(str, r["blocks"])), r["perplexity"].get(dataset),
                                 r["cost"]["seconds"], r["cost"]["forward_passes"], r["cost"]["mi_evaluations"]])

    write_file_atomically(data, write_table)
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
    write_file_atomically(png, fig.savefig)
    plt.close(fig)
    return png, data


def write_span_scores(
    spans: dict[tuple[int, int], float], singles: list[float], selected: list[int], *, metric: str,
    importance_label: str, title: str, plot: str | Path,
) -> Path:
    """The paper's Figure 2 view of a run's scores: a heatmap of every scored span (first block ×
    span length; unscored cells blank) with the removed blocks marked, above bars of each block's
    importance (lower = safer to remove; removed blocks highlighted). Writes a PNG to ``plot``."""
    import numpy as np

    plt = require_matplotlib()
    if not spans:
        raise MiprunError("the run scored no spans to plot")
    num_blocks = max(len(singles), max(f + n for f, n in spans))
    lengths = sorted({n for _, n in spans})
    grid = np.full((len(lengths), num_blocks), np.nan)
    for (first, length), value in spans.items():
        grid[lengths.index(length), first] = value
    fig = plt.figure(figsize=(max(7.0, num_blocks * 0.32), 7.5), layout="constrained")
    grid_spec = fig.add_gridspec(2, 2, width_ratios=(40, 1), height_ratios=(max(2, min(len(lengths), 8)), 3))
    top, bar_axis, bottom = fig.add_subplot(grid_spec[0, 0]), fig.add_subplot(grid_spec[0, 1]), fig.add_subplot(grid_spec[1, 0])
    image = top.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", origin="lower",
                       extent=(-0.5, num_blocks - 0.5, -0.5, len(lengths) - 0.5))
    top.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    top.set_ylabel("span length (blocks)")
    top.set_xlabel("first block of the span")
    top.set_title(title)
    fig.colorbar(image, cax=bar_axis, label=metric)
    for block in selected:
        top.axvline(block, color="red", linewidth=1.2, alpha=0.7)
    colors = ["tab:red" if b in selected else "tab:blue" for b in range(len(singles))]
    bottom.bar(range(len(singles)), singles, color=colors)
    bottom.set_xlim(-0.5, num_blocks - 0.5)
    bottom.set_xlabel("block (0-based; red = removed, red lines above)")
    bottom.set_ylabel(importance_label)
    bottom.grid(True, axis="y", alpha=0.3)
    from miprun.output import write_file_atomically

    png = write_file_atomically(Path(plot), lambda path: fig.savefig(path, dpi=120))
    plt.close(fig)
    return png
