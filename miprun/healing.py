"""Healing without training: one closed-form linear fit per cut, folded into a weight the model has.

For each *cut* — a maximal run of removed blocks ``[a, b]`` — the pruned model hands block ``b + 1``
the stream ``r + M`` that block ``a − 1`` produced, where ``M`` is what that block's FFN adds (its
down projection's output) and ``r`` the stream before that addition; the dense model hands it
``h`` (the stream after block ``b``). The healer changes the down projection of block ``a − 1`` so
that it adds ``h − r`` instead, as well as a linear fit over the calibration tokens can (first
position of every sequence left out: the attention sink). Two fits (``fit``):

* ``"projection"`` (miprun's default) refits the down projection itself: ``W`` minimises
  ``‖A·W − (h − r)‖² + λ‖W − W₀‖²``, where ``A`` are the FFN's hidden activations (the down
  projection's input, FFN-width wide; a bias, if the projection has one, is fitted with it) and
  ``W₀`` the projection it had. The refit reads every FFN neuron, not only the hidden-size output
  they are projected to, so it can carry more of what the removed blocks did.
* ``"map"`` (ReplaceMe's, Shopkhoev et al. 2025) fits a hidden × hidden map ``T`` on the FFN output,
  ``‖M·T − (h − r)‖² + λ‖T − I‖²``, and folds it (``W ← Tᵀ·W``, ``b ← b·T`` for ``nn.Linear``;
  ``W ← W·T`` for GPT-2's ``Conv1D``).

Both are solved from float64 Gram matrices accumulated batch by batch on the model's device; the
ridge ``λ`` is relative to the Gram's mean diagonal and shrinks toward the weights the model
already has (plain removal is the prior). A cut starting at block 0 has no block before it: the
embedding output is mapped instead (``E ← E·T``, the ``"map"`` fit with the healer's ridge), a
tied output head untied first (its weights stay the original embedding; the summary says so).
Cuts are fitted left to right, each on the states of the model already healed before it (the
earlier cuts skipped and their fits folded); the targets ``h`` are always the dense model's.

The checkpoint keeps the architecture and the parameter count of plain removal (the head untied
adds the embedding's size once, and only for a cut at block 0 of a tied model).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch

from miprun.errors import MiprunError
from miprun.models.adapters import ffn_in_features
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


def _with_ones(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with a column of ones appended: the input a fitted bias row multiplies."""
    return torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], -1)


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


FITS = ("projection", "map")
"""What a healer fits per cut: the down projection itself, or a hidden × hidden map on its output."""

DEFAULT_RIDGE = {"projection": 0.3, "map": 1e-4}
"""Default relative ridge per fit (docs/healing.md: how they were measured)."""


class LinearHealer:
    """Fit and fold one linear correction per cut (module docstring).

    :param fit: ``"projection"`` (refit the down projection before the cut from the FFN's hidden
        activations) or ``"map"`` (ReplaceMe: a hidden × hidden map on the FFN output).
    :param ridge: ridge added to the Gram matrix, relative to its mean diagonal entry, shrinking
        the fit toward the weights the model has; None takes :data:`DEFAULT_RIDGE` for ``fit``.
    :param batch_size: calibration sequences per forward batch (memory only).
    :param sequential: fit each cut on the model with the earlier cuts removed and healed (the
        default); False fits every cut on the dense model, as if it were the only one.
    """

    def __init__(self, fit: str = "projection", ridge: float | None = None, batch_size: int = 4,
                 sequential: bool = True) -> None:
        if fit not in FITS:
            raise MiprunError(f"unknown healing fit '{fit}'; choose: {', '.join(FITS)}")
        ridge = DEFAULT_RIDGE[fit] if ridge is None else ridge
        if not ridge >= 0:
            raise MiprunError(f"heal ridge must be ≥ 0, got {ridge!r}")
        self.fit = fit
        self.ridge = ridge
        self.batch_size = batch_size
        self.sequential = sequential

    def heal(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor) -> dict[str, Any]:
        """Fold one fit per cut of ``blocks`` into ``model`` (blocks still in place; the surgeon
        removes them afterwards). Returns the summary: per cut its residuals and fit time."""
        return self._fit(model, adapter, blocks, input_ids, handles=None)

    @contextmanager
    def applied(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor) -> Iterator[dict[str, Any]]:
        """Within the ``with`` block, the fits :meth:`heal` would fold act at run time instead
        (forward hooks on the modules they would be folded into); no weight changes. Yields the
        summary. The same model as folding, up to rounding (the hooks compute in float64)."""
        handles: list[Any] = []
        try:
            yield self._fit(model, adapter, blocks, input_ids, handles=handles)
        finally:
            for handle in handles:
                handle.remove()

    def _fit(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor,
             handles: list[Any] | None) -> dict[str, Any]:
        """Fit the cuts of ``blocks`` in order; fold each fit (``handles`` None) or hook it in."""
        check_healable(adapter)
        cuts = cuts_of(blocks)
        if cuts and cuts[0][0] == 0 and any(name.rpartition(".")[2] in POSITION_TABLES for name, _ in model.named_modules()):
            raise MiprunError("the cut starts at block 0 of a model with learned position embeddings, which a map "
                              "folded into the token embedding cannot follow; keep block 0 or run without --heal")
        targets = self._dense_targets(model, adapter, cuts, input_ids)
        summary: dict[str, Any] = {"fit": self.fit, "ridge": self.ridge, "tokens": 0, "cuts": []}
        pending: list[tuple[tuple[int, int], torch.Tensor, dict[str, Any]]] = []
        for index, cut in enumerate(cuts):
            start = time.perf_counter()
            earlier = [b for first, last in cuts[:index] for b in range(first, last + 1)] if self.sequential else []
            gram, cross, before, energy, tokens = self._accumulate(model, adapter, cut, earlier, input_ids, targets[cut])
            prior = self._prior(adapter, cut, gram)
            ridge = self.ridge * float(gram.diagonal().mean())
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            solution = torch.linalg.solve(gram + ridge * eye, cross + ridge * prior)
            # ‖X·W − Y‖² = ‖Y‖² − 2·tr(Wᵀ·XᵀY) + tr(Wᵀ·XᵀX·W)
            after = energy - 2 * float((solution * cross).sum()) + float((solution * (gram @ solution)).sum())
            record = {"blocks": list(range(cut[0], cut[1] + 1)),
                      "fit": self._kind(cut),
                      "relative_residual_before": (before / energy) ** 0.5,
                      "relative_residual_after": (max(after, 0.0) / energy) ** 0.5,
                      "seconds": round(time.perf_counter() - start, 3)}
            pending.append((cut, solution, record))
            if self.sequential:  # the next cut is fitted on the model healed so far
                self._apply(model, adapter, pending.pop(), handles, summary)
            summary["tokens"] = tokens
        for item in pending:  # independent fits: every one applied once all are fitted
            self._apply(model, adapter, item, handles, summary)
        summary["sequential"] = self.sequential
        return summary

    def _kind(self, cut: tuple[int, int]) -> str:
        """The fit of ``cut``: a cut at block 0 always maps the embedding output."""
        return self.fit if cut[0] > 0 else "map"

    def _prior(self, adapter: Any, cut: tuple[int, int], gram: torch.Tensor) -> torch.Tensor:
        """What the ridge shrinks toward: the identity for a map, the projection as it is (input ×
        output, a bias as the last row) for a refit."""
        if self._kind(cut) == "map":
            return torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        with editable_block(adapter, cut[0] - 1):
            _, down = adapter.ffn_modules(cut[0] - 1)
            weight = down.weight.detach().to(gram.device, torch.float64)
            rows = weight.T if isinstance(down, torch.nn.Linear) else weight
            if getattr(down, "bias", None) is not None:
                rows = torch.cat([rows, down.bias.detach().to(gram.device, torch.float64)[None]])
            return rows

    def _apply(self, model: Any, adapter: Any, item: tuple, handles: list[Any] | None, summary: dict[str, Any]) -> None:
        """Fold the fit of ``item`` (``handles`` None) or hook it in, and record the cut."""
        cut, solution, record = item
        if handles is None:
            record = {**self._fold(model, adapter, cut, solution), **record}
        else:
            handles.append(self._hook(model, adapter, cut, solution))
            record = {"applied_at_run_time": True, **record}
        summary["cuts"].append(record)

    def _hook(self, model: Any, adapter: Any, cut: tuple[int, int], solution: torch.Tensor) -> Any:
        """A forward hook giving the module the fit would be folded into (the down projection
        before the cut, or the input embedding) the output the folded module would give."""
        module = adapter.ffn_modules(cut[0] - 1)[1] if cut[0] > 0 else input_embedding(model)
        refit = self._kind(cut) == "projection"

        def apply(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
            value = args[0].double() if refit else out.double()
            if value.shape[-1] < solution.shape[0]:  # the refit's bias row
                value = _with_ones(value)
            return (value @ solution.to(out.device)).to(out.dtype)

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
                  input_ids: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per batch, on the model healed so far (the earlier cuts skipped): X, what the fit acts
        on (block ``a − 1``'s FFN hidden activations for a refit, its FFN output for a map, the
        embedding output for a cut at block 0), what the FFN adds as it is (the embedding output at
        block 0), and the rest of the stream entering the cut (None at block 0); float64 rows."""
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
                    rows = _rows(hidden)
                    captured.update(x=rows, out=rows, rest=None)
                    raise _Stop
                hook = adapter.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True)
            else:
                _, down = adapter.ffn_modules(first - 1)
                down_hook = down.register_forward_hook(lambda m, a, out: captured.update(self._down_rows(m, a, out)))
                stack.callback(down_hook.remove)

                def take_output(module, args, out):
                    captured["rest"] = _rows(_out(out)) - captured["out"]
                    raise _Stop
                hook = adapter.blocks[first - 1].register_forward_hook(take_output)
            stack.callback(hook.remove)
            stack.enter_context(skipping(adapter, earlier))
            for batch in self._batches(input_ids, input_device(model)):
                try:
                    adapter.backbone(input_ids=batch, use_cache=False)
                except _Stop:
                    pass
                yield captured["x"], captured["out"], captured["rest"]

    def _captures_layerwise(self, loader: Any, adapter: Any, cut: tuple[int, int], earlier: list[int],
                            input_ids: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """:meth:`_captures` block-major: one sweep up to the cut reads each block once."""
        first = cut[0]
        sweep = BlockSweep(adapter, loader, input_ids, self.batch_size, input_device(adapter.model))
        if first == 0:
            for hidden in sweep.inputs:
                rows = _rows(hidden)
                yield rows, rows, None
            return
        stream = Stream(frozenset(earlier))
        captured: list[dict[str, torch.Tensor]] = []
        _, down = adapter.ffn_modules(first - 1)
        handle = down.register_forward_hook(lambda m, a, out: captured.append(self._down_rows(m, a, out)))
        try:
            sweep.run([stream], until=first)
        finally:
            handle.remove()
        for rows, hidden in zip(captured, stream.states):
            yield rows["x"], rows["out"], _rows(hidden) - rows["out"]

    def _down_rows(self, down: Any, args: Any, out: Any) -> dict[str, torch.Tensor]:
        """The down projection's output rows ("out") and the rows the fit acts on ("x"): its input,
        with a column of ones when it has a bias, for a refit; its output for a map."""
        output = _rows(_out(out))
        if self.fit == "map":
            return {"x": output, "out": output}
        hidden = _rows(args[0])
        if getattr(down, "bias", None) is not None:
            hidden = _with_ones(hidden)
        return {"x": hidden, "out": output}

    def _accumulate(self, model: Any, adapter: Any, cut: tuple[int, int], earlier: list[int],
                    input_ids: torch.Tensor, targets: list[torch.Tensor]) -> tuple:
        """XᵀX, XᵀY, the plain removal's ‖M − Y‖², ‖Y‖² and the token count for ``cut`` on the
        model healed so far (the earlier cuts skipped); X is what the fit acts on, M what the
        FFN adds as it is, Y what it should add."""
        gram = cross = None
        before = energy = 0.0
        tokens = 0
        for (x, out, rest), target in zip(self._captures(model, adapter, cut, earlier, input_ids), targets):
            # float64 on the model's device: the Grams accumulate there
            y = target.to(x.device) - (rest if rest is not None else 0.0)
            gram = x.T @ x if gram is None else gram + x.T @ x
            cross = x.T @ y if cross is None else cross + x.T @ y
            before += float((out - y).pow(2).sum())
            energy += float(y.pow(2).sum())
            tokens += x.shape[0]
        return gram, cross, before, energy, tokens

    def _fold(self, model: Any, adapter: Any, cut: tuple[int, int], solution: torch.Tensor) -> dict[str, Any]:
        """Fold ``solution`` into the down projection before the cut, or into the embedding."""
        with torch.no_grad():
            if cut[0] > 0:
                with editable_block(adapter, cut[0] - 1):
                    _, down = adapter.ffn_modules(cut[0] - 1)
                    t = solution.to(down.weight.device)
                    linear = isinstance(down, torch.nn.Linear)  # y = x·Wᵀ + b; GPT-2's Conv1D: y = x·W + b
                    bias = getattr(down, "bias", None)
                    if self._kind(cut) == "projection":  # the solution is the projection: input (+ bias) × output
                        weight = t[: ffn_in_features(down)]
                        if bias is not None:
                            bias.copy_(t[-1].to(bias.dtype))
                    else:  # the map composed with the projection
                        weight = (down.weight.double().T if linear else down.weight.double()) @ t
                        if bias is not None:
                            bias.copy_((bias.double() @ t).to(bias.dtype))
                    down.weight.copy_((weight.T if linear else weight).to(down.weight.dtype))
                return {"folded_into": f"block {cut[0] - 1} FFN down projection", "untied_head": False}
            embedding = input_embedding(model)
            untied = False
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if head is not None and head.weight is embedding.weight:
                head.weight = torch.nn.Parameter(embedding.weight.detach().clone())
                model.config.tie_word_embeddings = False
                untied = True
            t = solution.to(embedding.weight.device)
            embedding.weight.copy_((embedding.weight.double() @ t).to(embedding.weight.dtype))
            return {"folded_into": "input embedding", "untied_head": untied}


HEALERS = {"linear": "projection", "replaceme": "map"}
"""The healing methods ``--heal`` accepts → the :class:`LinearHealer` fit each uses: ``linear``
refits the down projection before each cut (miprun's default), ``replaceme`` folds ReplaceMe's
hidden × hidden map."""


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
        raise MiprunError(f"--heal {heal} heals removed blocks: it needs --granularity block and the remove-blocks "
                          f"surgeon (this plan uses {plan.names.get('surgeon')})")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise MiprunError(f"--heal-samples must be a whole number ≥ 1, got {samples!r}")
    return LinearHealer(fit=HEALERS[heal])


def heal_aware_choice(healer: LinearHealer, model: Any, adapter: Any, candidates: list[list[int]],
                      heal_ids: torch.Tensor, *, held_out: float = 0.125,
                      batch_size: int = 4) -> tuple[list[int], dict[str, Any]]:
    """The candidate block set whose removal *heals* best, judged on text the fit did not see:
    the last ``held_out`` share of ``heal_ids`` (at least one sequence) is set aside, each candidate
    is healed on the rest (fits applied at run time, weights untouched) and scored by the mean
    next-token loss of the healed, pruned model on the held-out sequences; the lowest wins (ties:
    the earlier candidate). Judging on the fit's own tokens would reward whatever fits more — more
    cuts, more maps — rather than what generalises.

    :returns: the chosen blocks and a record with every candidate's held-out loss and residuals.
    """
    import math

    from miprun.probing import Prober

    count = int(heal_ids.shape[0])
    judged = max(1, round(count * held_out))
    if count - judged < 1:
        raise MiprunError(f"heal-aware selection sets aside {judged} of the {count} healing sequences to judge the "
                          f"candidates and needs at least one more to fit on; raise --heal-samples")
    fit_ids, judge_ids = heal_ids[: count - judged], heal_ids[count - judged :]
    prober = Prober(model, adapter, judge_ids, batch_size=batch_size)
    rows = []
    for rank, blocks in enumerate(candidates):
        start = time.perf_counter()
        with healer.applied(model, adapter, blocks, fit_ids) as summary:
            loss = prober.loss(blocks)
        rows.append({"candidate": sorted(blocks), "rank": rank, "healed_loss": loss, "healed_perplexity": math.exp(loss),
                     "residual_after": [c["relative_residual_after"] for c in summary["cuts"]],
                     "seconds": round(time.perf_counter() - start, 3)})
    best = min(rows, key=lambda row: (row["healed_loss"], row["rank"]))
    return best["candidate"], {"mode": "heal-aware", "criterion": "held-out loss after healing",
                               "fit_sequences": count - judged, "judged_sequences": judged, "candidates": rows}
