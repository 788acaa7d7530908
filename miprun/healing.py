"""Healing without training: a closed-form linear map per cut, folded into a weight the model has.

For each *cut* — a maximal run of removed blocks ``[a, b]`` — let ``M`` be what the last kept
block before the cut, block ``a − 1``, adds to the residual stream through its FFN (its down
projection's output) and ``r`` the stream before that addition, so the pruned model hands
``r + M`` to block ``b + 1``. The dense model hands it ``h`` (the stream after block ``b``). The
map ``T`` (hidden × hidden) minimising ``‖M·T − (h − r)‖²`` over the calibration tokens (first
position of every sequence left out: the attention sink) is solved in closed form from float64
Gram matrices accumulated batch by batch, with a ridge relative to the Gram's mean diagonal, and
folded into the down projection (``W ← Tᵀ·W`` and ``b ← b·T`` for ``nn.Linear``; ``W ← W·T`` for
GPT-2's ``Conv1D``). A cut starting at block 0 maps the embedding output instead (``E ← E·T``);
a tied output head is untied first (its weights stay the original embedding) and the summary says
so. Cuts are fitted left to right, each on the states of the model already healed before it (the
earlier cuts skipped and their maps folded); the targets ``h`` are always the dense model's.

The checkpoint keeps the architecture and the parameter count of plain removal (the head untied
adds the embedding's size once, and only for a cut at block 0 of a tied model). The idea is
ReplaceMe's (Shopkhoev et al., 2025); estimating and folding follow the formulas above.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch

from miprun.errors import MiprunError
from miprun.models.devices import input_device, input_embedding
from miprun.models.layerwise import editable_block, layerwise_loader
from miprun.models.sweep import BlockSweep, Stream
from miprun.probing import skipping


class _Stop(Exception):
    """Raised by a hook once the states a fit needs are captured: the rest of the pass is skipped."""


def cuts_of(blocks: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of the sorted removed ``blocks``."""
    runs: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


def _out(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _rows(hidden: torch.Tensor) -> torch.Tensor:
    """Every token but the first of each sequence, as float64 rows."""
    return hidden[:, 1:].reshape(-1, hidden.shape[-1]).double()


POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")
"""Module names of learned absolute position embeddings, added to the token embedding."""


def check_healable(adapter: Any) -> None:
    """Refuse architectures whose FFN output is not added to the stream as it is (a norm after the
    FFN, as in Gemma, or no separate down projection)."""
    if not adapter.spec.ffn:
        raise MiprunError(f"healing folds the map into the FFN's down projection, which '{adapter.model_type}' "
                          f"does not expose ({adapter.spec.ffn_note or 'no FFN layout registered'}); run without --heal")
    block = adapter.blocks[0]
    if any(hasattr(block, name) for name in ("post_feedforward_layernorm", "post_mlp_layernorm")):
        raise MiprunError(f"'{adapter.model_type}' normalises the FFN output before adding it to the stream, so a "
                          f"map folded into the down projection would not act linearly; run without --heal")


class LinearHealer:
    """Fit and fold one linear map per cut (module docstring).

    :param ridge: ridge added to the Gram matrix, relative to its mean diagonal entry.
    :param batch_size: calibration sequences per forward batch (memory only).
    :param sequential: fit each cut on the model with the earlier cuts removed and healed (the
        default); False fits every cut on the dense model, as if it were the only one.
    """

    def __init__(self, ridge: float = 1e-4, batch_size: int = 4, sequential: bool = True) -> None:
        if not ridge >= 0:
            raise MiprunError(f"heal ridge must be ≥ 0, got {ridge!r}")
        self.ridge = ridge
        self.batch_size = batch_size
        self.sequential = sequential

    def heal(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor) -> dict[str, Any]:
        """Fold one map per cut of ``blocks`` into ``model`` (blocks still in place; the surgeon
        removes them afterwards). Returns the summary: per cut its residuals and fit time."""
        return self._fit(model, adapter, blocks, input_ids, handles=None)

    @contextmanager
    def applied(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor) -> Iterator[dict[str, Any]]:
        """Within the ``with`` block, the maps :meth:`heal` would fold act at run time instead
        (forward hooks on the modules they would be folded into); no weight changes. Yields the
        summary. The same model as folding, up to rounding (the hook maps in float64)."""
        handles: list[Any] = []
        try:
            yield self._fit(model, adapter, blocks, input_ids, handles=handles)
        finally:
            for handle in handles:
                handle.remove()

    def _fit(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor,
             handles: list[Any] | None) -> dict[str, Any]:
        """Fit the cuts of ``blocks`` in order; fold each map (``handles`` None) or hook it in."""
        check_healable(adapter)
        cuts = cuts_of(blocks)
        if cuts and cuts[0][0] == 0 and any(name.rpartition(".")[2] in POSITION_TABLES for name, _ in model.named_modules()):
            raise MiprunError("the cut starts at block 0 of a model with learned position embeddings, which a map "
                              "folded into the token embedding cannot follow; keep block 0 or run without --heal")
        targets = self._dense_targets(model, adapter, cuts, input_ids)
        summary: dict[str, Any] = {"method": "linear", "ridge": self.ridge, "tokens": 0, "cuts": []}
        pending: list[tuple[tuple[int, int], torch.Tensor, dict[str, Any]]] = []
        for index, cut in enumerate(cuts):
            start = time.perf_counter()
            earlier = [b for first, last in cuts[:index] for b in range(first, last + 1)] if self.sequential else []
            gram, cross, before, energy, tokens = self._accumulate(model, adapter, cut, earlier, input_ids, targets[cut])
            dim = gram.shape[0]
            ridge = self.ridge * float(gram.diagonal().mean())
            transform = torch.linalg.solve(gram + ridge * torch.eye(dim, dtype=gram.dtype, device=gram.device), cross)
            # ‖X·T − Y‖² = ‖Y‖² − 2·tr(Tᵀ·XᵀY) + tr(Tᵀ·XᵀX·T)
            after = energy - 2 * float((transform * cross).sum()) + float((transform * (gram @ transform)).sum())
            record = {"blocks": list(range(cut[0], cut[1] + 1)),
                      "relative_residual_before": (before / energy) ** 0.5,
                      "relative_residual_after": (max(after, 0.0) / energy) ** 0.5,
                      "seconds": round(time.perf_counter() - start, 3)}
            pending.append((cut, transform, record))
            if self.sequential:  # the next cut is fitted on the model healed so far
                self._apply(model, adapter, pending.pop(), handles, summary)
            summary["tokens"] = tokens
        for item in pending:  # independent fits: every map applied once all are fitted
            self._apply(model, adapter, item, handles, summary)
        summary["sequential"] = self.sequential
        return summary

    def _apply(self, model: Any, adapter: Any, item: tuple, handles: list[Any] | None, summary: dict[str, Any]) -> None:
        """Fold the map of ``item`` (``handles`` None) or hook it in, and record the cut."""
        cut, transform, record = item
        if handles is None:
            record = {**self._fold(model, adapter, cut, transform), **record}
        else:
            handles.append(self._hook(model, adapter, cut, transform))
            record = {"applied_at_run_time": True, **record}
        summary["cuts"].append(record)

    @staticmethod
    def _hook(model: Any, adapter: Any, cut: tuple[int, int], transform: torch.Tensor) -> Any:
        """A forward hook applying ``transform`` to the output of the module the map would be
        folded into (the down projection before the cut, or the input embedding)."""
        module = adapter.ffn_modules(cut[0] - 1)[1] if cut[0] > 0 else input_embedding(model)

        def apply(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
            return (out.double() @ transform.to(out.device)).to(out.dtype)

        return module.register_forward_hook(apply)

    def _batches(self, input_ids: torch.Tensor, device: torch.device):
        for start in range(0, input_ids.shape[0], self.batch_size):
            yield input_ids[start : start + self.batch_size].to(device)

    def _dense_targets(self, model: Any, adapter: Any, cuts: list[tuple[int, int]], input_ids: torch.Tensor) -> dict:
        """The dense stream after the last block of every cut, per batch (float64 rows, CPU)."""
        targets: dict[tuple[int, int], list[torch.Tensor]] = {cut: [] for cut in cuts}
        loader = layerwise_loader(model)
        if loader is not None:  # block-major: every block read once for all batches
            sweep = BlockSweep(adapter, loader, input_ids, self.batch_size, input_device(model))
            stream = Stream(frozenset())
            ends = {cut[1] + 1: cut for cut in cuts}

            def keep(boundary: int) -> None:
                if boundary in ends:
                    targets[ends[boundary]] = [_rows(hidden).cpu() for hidden in stream.states]

            sweep.run([stream], on_boundary=keep, until=max(ends))
            return targets
        with ExitStack() as stack, torch.no_grad():
            for cut in cuts:
                hook = adapter.blocks[cut[1]].register_forward_hook(
                    lambda m, a, out, cut=cut: targets[cut].append(_rows(_out(out)).cpu()))
                stack.callback(hook.remove)
            for batch in self._batches(input_ids, input_device(model)):
                adapter.backbone(input_ids=batch, use_cache=False)
        return targets

    def _captures(self, model: Any, adapter: Any, cut: tuple[int, int], earlier: list[int],
                  input_ids: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per batch, on the model healed so far (the earlier cuts skipped): X, what the map acts
        on (block ``a − 1``'s FFN output, or the embedding output for a cut at block 0), and the
        rest of the stream entering the cut besides X (None for a cut at block 0); float64 rows."""
        first = cut[0]
        loader = layerwise_loader(model)
        if loader is not None:
            yield from self._captures_layerwise(loader, adapter, cut, earlier, input_ids)
            return
        captured: dict[str, torch.Tensor] = {}
        with ExitStack() as stack, torch.no_grad():
            if first == 0:  # the map acts on the embedding output: block 0's input
                def take_input(module, args, kwargs):
                    hidden = args[0] if args else kwargs["hidden_states"]
                    captured["x"], captured["rest"] = _rows(hidden), None
                    raise _Stop
                hook = adapter.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True)
            else:
                _, down = adapter.ffn_modules(first - 1)
                down_hook = down.register_forward_hook(lambda m, a, out: captured.__setitem__("x", _rows(_out(out))))
                stack.callback(down_hook.remove)

                def take_output(module, args, out):
                    captured["rest"] = _rows(_out(out)) - captured["x"]
                    raise _Stop
                hook = adapter.blocks[first - 1].register_forward_hook(take_output)
            stack.callback(hook.remove)
            stack.enter_context(skipping(adapter, earlier))
            for batch in self._batches(input_ids, input_device(model)):
                try:
                    adapter.backbone(input_ids=batch, use_cache=False)
                except _Stop:
                    pass
                yield captured["x"], captured["rest"]

    def _captures_layerwise(self, loader: Any, adapter: Any, cut: tuple[int, int], earlier: list[int],
                            input_ids: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """:meth:`_captures` block-major: one sweep up to the cut reads each block once."""
        first = cut[0]
        sweep = BlockSweep(adapter, loader, input_ids, self.batch_size, input_device(adapter.model))
        if first == 0:
            for hidden in sweep.inputs:
                yield _rows(hidden), None
            return
        stream = Stream(frozenset(earlier))
        outputs: list[torch.Tensor] = []
        _, down = adapter.ffn_modules(first - 1)
        handle = down.register_forward_hook(lambda m, a, out: outputs.append(_rows(_out(out))))
        try:
            sweep.run([stream], until=first)
        finally:
            handle.remove()
        for x, hidden in zip(outputs, stream.states):
            yield x, _rows(hidden) - x

    def _accumulate(self, model: Any, adapter: Any, cut: tuple[int, int], earlier: list[int],
                    input_ids: torch.Tensor, targets: list[torch.Tensor]) -> tuple:
        """XᵀX, XᵀY, ‖X − Y‖², ‖Y‖² and the token count for ``cut`` on the model healed so far
        (the earlier cuts skipped); X is what the map acts on, Y what it should produce."""
        gram = cross = None
        before = energy = 0.0
        tokens = 0
        for (x, rest), target in zip(self._captures(model, adapter, cut, earlier, input_ids), targets):
            # float64 on the model's device: the Grams accumulate there
            y = target.to(x.device) - (rest if rest is not None else 0.0)
            gram = x.T @ x if gram is None else gram + x.T @ x
            cross = x.T @ y if cross is None else cross + x.T @ y
            before += float((x - y).pow(2).sum())
            energy += float(y.pow(2).sum())
            tokens += x.shape[0]
        return gram, cross, before, energy, tokens

    def _fold(self, model: Any, adapter: Any, cut: tuple[int, int], transform: torch.Tensor) -> dict[str, Any]:
        """Fold ``transform`` into the down projection before the cut, or into the embedding."""
        with torch.no_grad():
            if cut[0] > 0:
                with editable_block(adapter, cut[0] - 1):
                    _, down = adapter.ffn_modules(cut[0] - 1)
                    t = transform.to(down.weight.device)
                    weight = down.weight.double()
                    if isinstance(down, torch.nn.Linear):  # y = x·Wᵀ + b
                        down.weight.copy_((t.T @ weight).to(down.weight.dtype))
                    else:  # Conv1D: y = x·W + b
                        down.weight.copy_((weight @ t).to(down.weight.dtype))
                    if getattr(down, "bias", None) is not None:
                        down.bias.copy_((down.bias.double() @ t).to(down.bias.dtype))
                return {"folded_into": f"block {cut[0] - 1} FFN down projection", "untied_head": False}
            embedding = input_embedding(model)
            untied = False
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if head is not None and head.weight is embedding.weight:
                head.weight = torch.nn.Parameter(embedding.weight.detach().clone())
                model.config.tie_word_embeddings = False
                untied = True
            t = transform.to(embedding.weight.device)
            embedding.weight.copy_((embedding.weight.double() @ t).to(embedding.weight.dtype))
            return {"folded_into": "input embedding", "untied_head": untied}


HEALERS = ("linear",)
"""The healing methods ``--heal`` accepts."""


def heals(plan: Any) -> bool:
    """Whether healing applies to ``plan``: it removes whole blocks with ``remove-blocks``."""
    return plan.granularity == "block" and plan.names.get("surgeon") == "remove-blocks"


def make_healer(heal: str | None, plan: Any, samples: int) -> LinearHealer | None:
    """The healer ``heal`` names (None without healing), checked against ``plan``: healing folds
    maps for removed blocks, so it needs block granularity and the ``remove-blocks`` surgeon."""
    from miprun.errors import did_you_mean

    if heal is None:
        return None
    if heal not in HEALERS:
        raise MiprunError(f"unknown healing '{heal}'{did_you_mean(str(heal), list(HEALERS))}; choose: {', '.join(HEALERS)}")
    if not heals(plan):
        raise MiprunError("--heal linear heals removed blocks: it needs --granularity block and the remove-blocks "
                          f"surgeon (this plan uses {plan.names.get('surgeon')})")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise MiprunError(f"--heal-samples must be a whole number ≥ 1, got {samples!r}")
    return LinearHealer()


def heal_aware_choice(healer: LinearHealer, model: Any, adapter: Any, candidates: list[list[int]],
                      heal_ids: torch.Tensor, eval_ids: torch.Tensor, *, batch_size: int = 4) -> tuple[list[int], dict[str, Any]]:
    """The candidate block set whose removal *heals* best: each is healed (maps fitted on
    ``heal_ids`` and applied at run time, weights untouched) and scored by the mean next-token
    loss of the healed, pruned model on ``eval_ids``; the lowest wins (ties: the earlier candidate).

    :returns: the chosen blocks and a record with every candidate's healed loss and residuals.
    """
    import math

    from miprun.probing import Prober

    prober = Prober(model, adapter, eval_ids, batch_size=batch_size)
    rows = []
    for rank, blocks in enumerate(candidates):
        start = time.perf_counter()
        with healer.applied(model, adapter, blocks, heal_ids) as summary:
            loss = prober.loss(blocks)
        rows.append({"candidate": sorted(blocks), "rank": rank, "healed_loss": loss, "healed_perplexity": math.exp(loss),
                     "residual_after": [c["relative_residual_after"] for c in summary["cuts"]],
                     "seconds": round(time.perf_counter() - start, 3)})
    best = min(rows, key=lambda row: (row["healed_loss"], row["rank"]))
    return best["candidate"], {"mode": "heal-aware", "criterion": "calibration loss after healing", "candidates": rows}
