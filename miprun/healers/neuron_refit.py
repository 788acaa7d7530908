"""``neuron-linear`` (the width default; ``--heal linear`` at neuron granularity): after the neurons
to remove are chosen, refit every FFN's down projection on the neurons it keeps, in closed form,
so that the layer's FFN output matches the dense one on the healing tokens.

Per layer, over every token but the first of each sequence (the attention sink), with ``A`` the
kept neurons' activations (the down projection's input restricted to the
kept columns; a column of ones when the projection has a bias) and ``Y`` the dense FFN output,
``W = argmin ‖A·W − Y‖² + λ‖W − W₀‖²`` where ``W₀`` is the projection's kept columns (plain
removal is the prior) and ``λ`` is ``ridge`` times the Gram's mean diagonal. FLAP's bias
compensation is the special case that fits the intercept alone. Every layer is fitted on the dense
model's activations (one pass over the healing tokens accumulates all layers' Gram matrices), then
the kept columns are overwritten; the surgeon slices the removed ones away afterwards, so the
checkpoint has the same architecture and width as plain removal.

Memory: one kept-width² float64 Gram per layer (SmolLM2-135M at 20 %: 12 MB × 30 layers). Time:
the float64 Gram products dominate (about 2 TFLOP for SmolLM2-135M at 20 % on 128 × 256 tokens;
float32 products were tried and lose the 1e-5 exactness the tests ask for).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch

from miprun.healing_fit import ridge_solver, with_ones
from miprun.models.devices import input_device


def _rows(value: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Every token of ``value`` but the first of each sequence (the attention sink, whose massive
    activations would dominate the fit), as float64 rows; ``shape`` is the batch's (sequences,
    tokens), for FFN tensors flattened to tokens × features (OPT)."""
    return value.reshape(*shape, value.shape[-1])[:, 1:].reshape(-1, value.shape[-1]).double()


class NeuronRefitHealer:
    """Refit each FFN's down projection on its kept neurons (module docstring).

    :param ridge: ridge relative to each Gram's mean diagonal, shrinking toward the kept columns.
    :param batch_size: healing sequences per forward batch (memory only).
    """

    def __init__(self, ridge: float = 0.01, batch_size: int = 4) -> None:
        from miprun.errors import MiprunError

        if not ridge >= 0:
            raise MiprunError(f"heal ridge must be ≥ 0, got {ridge!r}")
        self.ridge = float(ridge)
        self.batch_size = int(batch_size)

    def check(self, adapter: Any) -> None:
        """Refuse, in one line, an architecture whose FFN is not sliced neuron by neuron."""
        adapter.ffn_modules(0)

    def heal(self, model: Any, adapter: Any, selection: Any, input_ids: torch.Tensor) -> dict[str, Any]:
        """Overwrite the kept columns (and bias) of every layer's down projection with the refit;
        ``selection`` is a :class:`~miprun.contracts.NeuronSelection` (neurons still in place)."""
        fits, summary = self._fit(model, adapter, selection, input_ids)
        with torch.no_grad():
            for layer, solution in fits.items():
                _, down = adapter.ffn_modules(layer)
                kept = torch.tensor(selection.keep[layer], device=down.weight.device)
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
                value = args[0].double().index_select(-1, kept.to(out.device))
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
        """One dense pass accumulating every layer's normal equations, then one solve per layer."""
        start = time.perf_counter()
        stats: dict[int, dict[str, Any]] = {}
        shape: list[int] = []
        with ExitStack() as stack, torch.no_grad():
            def on_backbone(module, args, kwargs):
                shape[:] = (kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape[:2]
            stack.callback(adapter.backbone.register_forward_pre_hook(on_backbone, with_kwargs=True).remove)
            for layer, kept in selection.keep.items():
                _, down = adapter.ffn_modules(layer)
                index = torch.tensor(kept)
                stats[layer] = {"gram": None, "cross": None, "before": 0.0, "energy": 0.0, "tokens": 0}

                def take(module, args, out, index=index, entry=stats[layer]):
                    acts = _rows(args[0], shape)
                    x = acts.index_select(1, index.to(acts.device))
                    y = _rows(out, shape)
                    bias = getattr(module, "bias", None)
                    if bias is not None:
                        x = with_ones(x)
                    weight = module.weight.detach().double()
                    kept_weight = weight[:, index] if isinstance(module, torch.nn.Linear) else weight[index].T
                    plain = x[:, : len(index)] @ kept_weight.T + (bias.double() if bias is not None else 0.0)
                    entry["gram"] = x.T @ x if entry["gram"] is None else entry["gram"] + x.T @ x
                    entry["cross"] = x.T @ y if entry["cross"] is None else entry["cross"] + x.T @ y
                    entry["before"] += float((plain - y).pow(2).sum())
                    entry["energy"] += float(y.pow(2).sum())
                    entry["tokens"] += x.shape[0]

                stack.callback(down.register_forward_hook(take).remove)
            device = input_device(model)
            for first in range(0, input_ids.shape[0], self.batch_size):
                adapter.backbone(input_ids=input_ids[first : first + self.batch_size].to(device), use_cache=False)
        fits: dict[int, torch.Tensor] = {}
        layers = []
        for layer, entry in stats.items():
            _, down = adapter.ffn_modules(layer)
            index = torch.tensor(selection.keep[layer])
            weight = down.weight.detach().double().to(entry["gram"].device)
            prior = weight[:, index].T if isinstance(down, torch.nn.Linear) else weight[index]
            if getattr(down, "bias", None) is not None:
                prior = torch.cat([prior, down.bias.detach().double().to(prior.device)[None]])
            gram, cross = entry["gram"], entry["cross"]
            solution = ridge_solver(gram, self.ridge)(cross, prior)
            after = entry["energy"] - 2 * float((solution * cross).sum()) + float((solution * (gram @ solution)).sum())
            fits[layer] = solution
            layers.append({"layer": layer, "kept": len(index),
                           "relative_residual_before": (entry["before"] / entry["energy"]) ** 0.5,
                           "relative_residual_after": (max(after, 0.0) / entry["energy"]) ** 0.5})
        tokens = next(iter(stats.values()))["tokens"] if stats else 0
        with_bias = any(getattr(adapter.ffn_modules(layer)[1], "bias", None) is not None for layer in stats)
        summary = {"fit": "kept-neuron projection", "ridge": self.ridge, "tokens": tokens, "intercept": with_bias,
                   "layers": layers, "seconds": round(time.perf_counter() - start, 3)}
        return fits, summary
