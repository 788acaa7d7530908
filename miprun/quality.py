"""The quality check every run ends with: the pruned model beside the dense one on held-out windows.

A run's selection (and healing) sees its calibration windows; the check reads
:data:`WINDOWS` windows of the same source drawn with another seed (``seed + 1``) where no
calibration or healing window reaches (``load_calibration(..., held_out_from=...)``; a source too
small for that says so in one line), and reports the perplexity of the dense model (measured before any edit) and of the pruned
one, and their ratio. A pruned model whose mean next-token loss is more than :data:`RUINED_NATS`
above dense (perplexity more than e ≈ 2.7 × dense) is called ruined: the run warns in one line
and names what to try instead. The check costs one dense and one pruned pass over those windows;
the dense pass keeps its first blocks' outputs (:class:`~miprun.probing.DensePrefix`), and the
pruned pass (and the run's measure of plain removal before healing) replays those the run left as
they were — the blocks before the first one it removed or changed — so they are not computed twice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

WINDOWS = 8
"""Held-out windows the check reads (of the run's sequence length)."""

RUINED_NATS = 1.0
"""Loss increase over dense, in nats per token, above which the result is called ruined."""


@dataclass
class DenseReference:
    """The dense model's loss on the check's windows, measured before the run edits the model."""

    input_ids: Any
    loss: float
    seconds: float
    source: dict[str, Any]
    prefix: Any = None
    """The dense pass's first blocks' outputs (:class:`~miprun.probing.DensePrefix`), replayed by
    later passes over the same windows where the blocks are unchanged."""


def dense_reference(model: Any, adapter: Any, input_ids: Any, source: dict[str, Any]) -> DenseReference:
    """Measure the dense model's mean next-token loss on ``input_ids`` (the held-out windows),
    keeping its first blocks' outputs for the passes that follow."""
    from miprun.probing import DensePrefix, Prober

    start = time.perf_counter()
    prefix = DensePrefix()
    loss = Prober(model, adapter, input_ids).loss([], keep=prefix)
    return DenseReference(input_ids, loss, time.perf_counter() - start, source, prefix)


def check_quality(model: Any, adapter: Any, reference: DenseReference, *, suggestion: str) -> dict[str, Any]:
    """The pruned ``model`` on the reference's windows: perplexities, ratio, loss increase, cost,
    and a ``warning`` line when the result is ruined (``suggestion`` says what to try instead)."""
    from miprun.probing import Prober

    start = time.perf_counter()
    loss = Prober(model, adapter, reference.input_ids).loss([], replay=reference.prefix)
    seconds = time.perf_counter() - start
    dense_ppl, pruned_ppl = math.exp(reference.loss), math.exp(loss) if loss < 700 else math.inf
    windows, seq_len = (int(d) for d in reference.input_ids.shape)
    record: dict[str, Any] = {
        "windows": windows, "seq_len": seq_len, "data": reference.source,
        "dense_perplexity": dense_ppl, "pruned_perplexity": pruned_ppl, "ratio": pruned_ppl / dense_ppl,
        "loss_increase_nats": loss - reference.loss, "ruined_above_nats": RUINED_NATS,
        "seconds": {"dense": round(reference.seconds, 3), "pruned": round(seconds, 3)},
    }
    if not math.isfinite(loss) or loss - reference.loss > RUINED_NATS:
        record["warning"] = (f"the pruned model is far worse than dense on held-out text (perplexity "
                             f"{pruned_ppl:.4g} vs {dense_ppl:.4g}, {record['ratio']:.3g}×); {suggestion}")
    return record


def summary_line(record: dict[str, Any]) -> str:
    """One line for the run's summary and model card."""
    return (f"perplexity {record['pruned_perplexity']:.2f} vs dense {record['dense_perplexity']:.2f} "
            f"({record['ratio']:.2f}×) on {record['windows']} held-out windows × {record['seq_len']} tokens")
