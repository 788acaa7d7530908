"""``neuron-linear`` (the width default; ``--heal linear`` at neuron granularity): after the neurons
to remove are chosen, refit every FFN's down projection on the neurons it keeps, in closed form,
so that the layer's FFN output matches the dense one on the healing tokens.

Per layer, with ``A`` the kept neurons' activations (the down projection's input restricted to the
kept columns; a column of ones when the projection has a bias) and ``Y`` the dense FFN output,
``W = argmin ‖A·W − Y‖² + λ‖W − W₀‖²`` where ``W₀`` is the projection's kept columns (plain
removal is the prior) and ``λ`` is ``ridge`` times the Gram's mean diagonal. Each layer is fitted
on dense inputs but runs after 29 other refitted layers, so the prior matters: on SmolLM2-135M at
20 % (128 × 256 tokens) WikiText-2 perplexity was 42.2 at ridge 0.01, 41.4 at 0.03, 40.5 at 0.1 and
40.3 at 0.3 — flat from 0.1 on, which is the default (0.01 before).

The first token of every sequence is the attention sink: its activations are orders of magnitude
larger than other tokens', and every later token reads its output through attention. Taken as it
is, it dominates the fit (random + healing was worse than plain removal); left out (``sink="skip"``,
earlier versions), the fit is free to change what the sink's massive neurons send, and on
SmolLM2-135M at 20 % a fit on 64 × 256 tokens then gave WikiText-2 perplexity 88.3 against 47.9
for plain removal — healing only worked when some later token of the sample happened to behave like
a sink. By default (``sink="average"``) each sequence's first row is scaled so that its output has
the batch's mean energy per token: the sink is one ordinary token of the fit, so the refit must keep
it but cannot be dominated by it (the same 64 sequences: 42.2; docs/neuron-pruning.md). FLAP's bias
compensation is the special case that fits the intercept alone. Every layer is fitted on the dense
model's activations (one pass over the healing tokens accumulates all layers' Gram matrices), then
the kept columns are overwritten; the surgeon slices the removed ones away afterwards, so the
checkpoint has the same architecture and width as plain removal.

Memory and time: one (kept width + 1)² Gram and one (kept width + 1) × hidden cross product per
layer, summed in float32 under a ridge (float64 without), each read as float64 for its solve.
Layers whose matrices together exceed ``max_bytes`` are fitted in groups, one pass per group that
stops after the group's last layer (a 7B model at 20 % needs about 0.45 GB per layer, so 4 GiB
means 4 groups and about 2.7 passes' work). The products dominate the time after the pass itself
(about 3 TFLOP for SmolLM2-135M at 20 % on 128 × 256 tokens). With a ridge they are float32,
added batch by batch by the products themselves (:class:`~miprun.healing_fit.RunningProducts`);
the ridge floor λ bounds how much their rounding can move the solution, far below the
float32/bfloat16 precision the weights are stored in. Without a ridge (``ridge=0``, exact fits of
singular systems) they stay float64. On a CPU with bfloat16 units (``products="auto"``, the
default) the products multiply bfloat16 inputs with float32 sums and the healing pass runs under
bfloat16 autocast (:mod:`miprun.models.matmul_precision`): on SmolLM2-135M at 20 % the fit took
40.4 s instead of 64.0 s with bfloat16 products (WikiText-2 perplexity 40.88 against 40.87), and
28.0 s instead of 31.2 s once the pass ran under autocast (40.80 against 40.82);
``products="float32"`` keeps float32 multiplications.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from miprun.healing_fit import (
    SINK_RULES,
    RunningProducts,
    first_rows,
    fit_error,
    ridge_solver,
    sink_weights,
    with_ones,
)
from miprun.models.devices import input_device
from miprun.models.matmul_precision import (
    PRODUCT_RULES,
    exact_hooks,
    fit_products,
    products_label,
    statistics_pass,
)
from miprun.models.weight_undo import UndoableEdits, WeightUndo
from miprun.probing import forward_until

BATCH_TOKENS = 2048
"""Healing tokens per forward batch by default: on SmolLM2-135M at 20 % (128 × 256 tokens) the fit
took 25.2 s in batches of 8 sequences against 28.4 s in batches of 4 and 28.8 s in batches of 16
(the products sum twice as many rows per call; the solution moved by 0.2 % of its largest entry)."""

def kept_columns(value: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``value``'s last-dimension entries at ``index``, gathered as rows of a matrix: on CPU
    ``index_select`` over the last dimension of a 3-D activation tensor took ten times as long as
    over the columns of its 2-D view (7.6 against 0.8 ms for 4 × 256 × 1 536), the same values."""
    flat = value.reshape(-1, value.shape[-1]).index_select(1, index.to(value.device))
    return flat.reshape(*value.shape[:-1], flat.shape[-1])


def weighted_rows(x: torch.Tensor, y: torch.Tensor, shape: list[int], dtype: torch.dtype, sink: str,
                  ones: bool = False) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """The rows of one batch's inputs ``x`` (with a column of ones when ``ones``: the intercept)
    and outputs ``y`` as the fit reads them, of ``dtype`` in token order: every token
    but each sequence's first as it is, and the first ones (inputs, ones and output alike, a
    weighted least-squares row) scaled so that their output carries the batch's mean energy per
    other token (``sink="average"``) or by 0 (``sink="skip"``, and when no other token exists:
    left out). ``shape`` is the batch's (sequences, tokens), for FFN tensors flattened to tokens ×
    features (OPT). Returns (inputs, outputs, the rows that count, the outputs' ‖·‖²). The outputs
    are a new tensor; the inputs are ``x`` itself, scaled in place, where ``x`` already has ``dtype``
    and no ones are added (pass a tensor you own). Only the first rows are multiplied (a product by
    1 changes nothing)."""
    sequences, tokens = shape
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    if ones:
        rows = with_ones(rows)
    out = y.reshape(-1, y.shape[-1])
    energy = torch.linalg.vector_norm(out, dim=1, dtype=torch.float64).pow(2)
    first = first_rows(energy.shape[0], sequences, energy.device)
    weight = torch.ones_like(energy)
    weight[first] = sink_weights(energy, sequences, sink)
    counted = rows.shape[0] - (sequences if sink == "skip" or tokens == 1 else 0)
    total = float((energy * weight.pow(2)).sum())
    scale = weight[first].to(dtype)[:, None]
    outputs = out.to(dtype, copy=True)  # never the module's own output
    rows[first] = rows[first] * scale
    outputs[first] = outputs[first] * scale
    return rows, outputs, counted, total


class NeuronRefitHealer(UndoableEdits):
    """Refit each FFN's down projection on its kept neurons (module docstring); :meth:`undo` puts
    back the kept columns (and bias) :meth:`heal` overwrote, before or after the surgeon slices.

    :param ridge: ridge relative to each Gram's mean diagonal, shrinking toward the kept columns.
    :param sink: ``average`` (default): each sequence's first token is fitted as one token of the
        batch's mean output energy; ``skip``: left out (earlier versions; fragile, module docstring).
    :param batch_size: healing sequences per forward batch (None: as many as make
        :data:`BATCH_TOKENS` tokens, at least one).
    :param max_bytes: most bytes of normal equations held at once; more layers are fitted in
        groups, one pass each (default 4 GiB).
    :param products: ``auto`` (default): under a ridge of at least
        :data:`~miprun.models.matmul_precision.RIDGE_FLOOR`, the fit's products multiply bfloat16
        inputs with float32 sums and the healing pass runs under bfloat16 autocast on a CPU with
        bfloat16 units (module docstring);
        ``float32``: float32 multiplications. Without a ridge they are float64 either way.
    """

    def __init__(self, ridge: float = 0.1, sink: str = "average", batch_size: int | None = None, max_bytes: int = 4 << 30,
                 products: str = "auto") -> None:
        from miprun.errors import MiprunError

        if not ridge >= 0:
            raise MiprunError(f"heal ridge must be ≥ 0, got {ridge!r}")
        if sink not in SINK_RULES:
            raise MiprunError(f"neuron-linear option sink={sink!r} must be one of {', '.join(SINK_RULES)}")
        self.sink = sink
        if products not in PRODUCT_RULES:
            raise MiprunError(f"neuron-linear option products={products!r} must be one of {', '.join(PRODUCT_RULES)}")
        self.products = products
        if (batch_size is not None and int(batch_size) < 1) or int(max_bytes) < 1:
            raise MiprunError(f"neuron-linear needs batch_size ≥ 1 and max_bytes ≥ 1, got {batch_size!r} and {max_bytes!r}")
        self.ridge = float(ridge)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.max_bytes = int(max_bytes)

    def check(self, adapter: Any) -> None:
        """Refuse, in one line, an architecture whose FFN is not sliced neuron by neuron."""
        adapter.ffn_modules(0)

    def heal(self, model: Any, adapter: Any, selection: Any, input_ids: torch.Tensor) -> dict[str, Any]:
        """Overwrite the kept columns (and bias) of every layer's down projection with the refit;
        ``selection`` is a :class:`~miprun.contracts.NeuronSelection` (neurons still in place)."""
        fits, summary = self._fit(model, adapter, selection, input_ids)
        self._undo = WeightUndo()
        with torch.no_grad():
            for layer, solution in fits.items():
                _, down = adapter.ffn_modules(layer)
                kept = torch.tensor(selection.keep[layer], device=down.weight.device)
                self._undo.keep(down, "bias")
                self._undo.keep(down, "weight", index=torch.tensor(sorted(selection.keep[layer])),  # the surgeon's order
                                axis=1 if isinstance(down, torch.nn.Linear) else 0)
                t = solution.to(down.weight.device)
                weight = t[: len(kept)]
                if getattr(down, "bias", None) is not None:
                    down.bias.copy_(t[-1].to(down.bias.dtype))
                if isinstance(down, torch.nn.Linear):  # (out × in): columns are neurons
                    down.weight[:, kept] = weight.T.to(down.weight.dtype)
                else:  # GPT-2 Conv1D (in × out): rows are neurons
                    down.weight[kept, :] = weight.to(down.weight.dtype)
        return summary

    @contextmanager
    def applied(self, model: Any, adapter: Any, selection: Any, input_ids: torch.Tensor) -> Iterator[dict[str, Any]]:
        """Within the ``with`` block the pruned-and-refitted FFNs act at run time (hooks on the
        down projections that read only the kept neurons); no weight changes."""
        fits, summary = self._fit(model, adapter, selection, input_ids)
        handles = []
        for layer, solution in fits.items():
            _, down = adapter.ffn_modules(layer)
            kept = torch.tensor(selection.keep[layer])

            def apply(module, args, out, kept=kept, solution=solution):
                value = kept_columns(args[0], kept).double()
                if value.shape[-1] < solution.shape[0]:
                    value = with_ones(value)
                return (value @ solution.to(out.device)).to(out.dtype)

            handles.append(down.register_forward_hook(apply))
        try:
            yield summary
        finally:
            for handle in handles:
                handle.remove()

    def _fit(self, model: Any, adapter: Any, selection: Any, input_ids: torch.Tensor) -> tuple[dict, dict[str, Any]]:
        """Accumulate the layers' normal equations (one pass per group that fits ``max_bytes``),
        then one solve per layer."""
        start = time.perf_counter()
        groups = self._groups(adapter, selection)
        fits: dict[int, torch.Tensor] = {}
        layers: list[dict[str, Any]] = []
        tokens = 0
        with fit_products(model, self.products, self.ridge) as used:
            for group in groups:  # the solves are float64, which the setting leaves alone
                stats = self._accumulate(model, adapter, selection, input_ids, group, stop=len(groups) > 1,
                                         used=used)
                for layer in list(stats):  # each layer's sums released once solved
                    entry = stats.pop(layer)
                    fits[layer], row = self._solve(adapter.ffn_modules(layer)[1], selection.keep[layer], entry)
                    layers.append({"layer": layer, **row})
                    tokens = entry["tokens"]
        with_bias = any(getattr(adapter.ffn_modules(layer)[1], "bias", None) is not None for layer in fits)
        summary = {"fit": "kept-neuron projection", "ridge": self.ridge, "sink": self.sink, "tokens": tokens,
                   "intercept": with_bias,
                   "products": products_label(used, exact=self.ridge == 0),
                   "pass": "bfloat16 autocast" if used == "bfloat16" else "model precision",
                   "passes": len(groups), "layers": layers, "seconds": round(time.perf_counter() - start, 3)}
        return fits, summary

    def _groups(self, adapter: Any, selection: Any) -> list[list[int]]:
        """Consecutive layers whose normal equations (float32 under a ridge, float64 without) fit
        ``max_bytes`` together (a layer larger than the budget alone is its own group)."""
        groups: list[list[int]] = []
        held = 0
        for layer in sorted(selection.keep):
            _, down = adapter.ffn_modules(layer)
            outputs = down.weight.shape[0] if isinstance(down, torch.nn.Linear) else down.weight.shape[1]
            rows = len(selection.keep[layer]) + 1
            size = (8 if self.ridge == 0 else 4) * rows * (rows + outputs)
            if not groups or held + size > self.max_bytes:
                groups.append([])
                held = 0
            groups[-1].append(layer)
            held += size
        return groups

    def _accumulate(self, model: Any, adapter: Any, selection: Any, input_ids: torch.Tensor, group: list[int],
                    *, stop: bool, used: str) -> dict[int, dict[str, Any]]:
        """One pass over the healing tokens summing, for every layer of ``group``, XᵀX, XᵀY and
        ‖Y‖² (X the kept neurons, with ones under a bias; Y the dense FFN output); with ``stop``,
        each batch is abandoned after the group's last layer."""
        product = torch.float64 if self.ridge == 0 else torch.float32
        stats: dict[int, dict[str, Any]] = {}
        shape: list[int] = []
        with ExitStack() as stack, torch.no_grad():
            def on_backbone(module, args, kwargs):
                shape[:] = (kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape[:2]
            stack.callback(adapter.backbone.register_forward_pre_hook(on_backbone, with_kwargs=True).remove)
            for layer in group:
                _, down = adapter.ffn_modules(layer)
                stats[layer] = {"products": RunningProducts(), "energy": 0.0, "tokens": 0}
                index = torch.tensor(selection.keep[layer])

                def take(module, args, out, index=index, entry=stats[layer]):
                    with exact_hooks():
                        # converted before the gather: index_select over bfloat16 columns took 2.6 ms, over
                        # float32 ones 1.0 ms with the conversion (1 024 × 1 536 activations)
                        x, y, rows, energy = weighted_rows(kept_columns(args[0].to(product), index), out, shape,
                                                           product, self.sink,
                                                           ones=getattr(module, "bias", None) is not None)
                        entry["products"].add(x, y)
                    entry["energy"] += energy
                    entry["tokens"] += rows

                stack.callback(down.register_forward_hook(take).remove)
            device = input_device(model)
            last = adapter.ffn_modules(group[-1])[1]
            stack.enter_context(statistics_pass(used))
            size = self.batch_size or max(1, BATCH_TOKENS // max(1, int(input_ids.shape[1])))
            for first in range(0, input_ids.shape[0], size):
                batch = input_ids[first : first + size].to(device)
                if stop:
                    forward_until(last, lambda batch=batch: adapter.backbone(input_ids=batch, use_cache=False))
                else:
                    adapter.backbone(input_ids=batch, use_cache=False)
        return stats

    def _solve(self, down: Any, kept: list[int], entry: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The ridge solution toward ``down``'s kept columns (and bias), and the relative residuals
        of plain removal and of the fit, both from the normal equations."""
        gram, cross = entry["products"].gram, entry["products"].cross
        index = torch.tensor(kept)
        weight = down.weight.detach().double().to(gram.device)
        prior = weight[:, index].T if isinstance(down, torch.nn.Linear) else weight[index]
        if getattr(down, "bias", None) is not None:
            prior = torch.cat([prior, down.bias.detach().double().to(prior.device)[None]])
        solution = ridge_solver(gram, self.ridge)(cross, prior)

        def residual(w: torch.Tensor) -> float:  # ‖XW − Y‖ / ‖Y‖
            return (fit_error(entry["energy"], gram, cross, w) / entry["energy"]) ** 0.5 if entry["energy"] > 0 else 0.0

        return solution, {"kept": len(kept), "relative_residual_before": residual(prior),
                          "relative_residual_after": residual(solution)}
