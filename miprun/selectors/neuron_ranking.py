"""One home for width selectors that rank neurons by a per-neuron score: keep the highest."""

from __future__ import annotations

from typing import Any, Callable

import torch

from miprun.contracts import NeuronScores, NeuronSelection


def keep_highest(scores: NeuronScores, n: int, score: Callable[[int, int], torch.Tensor], *,
                 criterion: str) -> NeuronSelection:
    """Remove from every layer the ``n`` neurons of lowest ``score(position, layer)`` (ties: the
    higher index goes first); the trace records each layer's score range and threshold."""
    keep, trace = {}, []
    for position, (layer, width) in enumerate(zip(scores.layers, scores.widths)):
        values = score(position, layer).float().cpu()
        order = sorted(range(width), key=lambda j: (float(values[j]), -j))
        keep[layer] = sorted(order[n:])
        trace.append({"layer": layer, "min": float(values.min()), "max": float(values.max()),
                      "threshold": float(values[order[n - 1]]) if n > 0 else None})
    return NeuronSelection(keep=keep, trace=trace, info={"criterion": criterion})


def output_energy(acts: torch.Tensor, columns: torch.Tensor, centred: bool) -> torch.Tensor:
    """Per neuron, the energy it sends forward: ‖W_down[:, j]‖² · E[a_j²] over the collected tokens
    (``acts``: tokens × m; ``columns``: hidden × m, :func:`down_columns`), with E[(a_j − ā_j)²] when
    ``centred`` — FLAP's fluctuation score, and the energy a down projection with a bias (which
    absorbs the mean) loses. float64."""
    a = acts.to(torch.float64)
    power = a.var(dim=0, unbiased=False) if centred else a.pow(2).mean(dim=0)
    return power * columns.to(torch.float64).pow(2).sum(dim=0)


def down_columns(adapter: Any, layer: int) -> torch.Tensor:
    """The down projection of ``layer`` as (hidden × neurons), float32 on the CPU."""
    from miprun.models.adapters import neuron_axis

    _, down = adapter.ffn_modules(layer)
    weight = down.weight.detach().float().cpu()
    return weight if neuron_axis(down, "down") == 1 else weight.T


def activations(context: Any, who: str) -> Any:
    """The run's collected FFN activations, or a one-line error naming ``who``."""
    from miprun.errors import MiprunError

    inputs = getattr(context, "inputs", None) if context is not None else None
    if inputs is None or not hasattr(inputs, "acts"):
        raise MiprunError(f"{who} reads the FFN activations the run collects; run it through miprun run / miprun.prune")
    return inputs
