"""Healing without training: one closed-form linear fit per cut, folded into a weight the model has.

For each *cut* — a maximal run of removed blocks ``[a, b]`` — the pruned model hands block ``b + 1``
the stream ``r + M`` that block ``a − 1`` produced, where ``M`` is what that block's FFN adds (its
down projection's output) and ``r`` the stream before that addition; the dense model hands it
``h`` (the stream after block ``b``). The healer changes the down projection of block ``a − 1`` so
that it adds ``h − r`` instead, as well as a linear fit over the calibration tokens can (each
sequence's first token, the attention sink, weighted as one token of average target energy: left
out, a refit on few sequences could change what the sink sends — :func:`~miprun.healing_fit.sink_weights`,
``sink`` option). Two fits (``fit``):

* ``"projection"`` (miprun's default) refits the down projection itself: ``W`` minimises
  ``‖A·W − (h − r)‖² + λ‖W − W₀‖²``, where ``A`` are the FFN's hidden activations (the down
  projection's input, FFN-width wide; a bias, if the projection has one, is fitted with it) and
  ``W₀`` the projection it had. The refit reads every FFN neuron, not only the hidden-size output
  they are projected to, so it can carry more of what the removed blocks did.
* ``"map"`` (ReplaceMe's, Shopkhoev et al. 2025) fits a hidden × hidden map ``T`` on the FFN output,
  ``‖M·T − (h − r)‖² + λ‖T − I‖²``, and folds it (``W ← Tᵀ·W``, ``b ← b·T`` for ``nn.Linear``;
  ``W ← W·T`` for GPT-2's ``Conv1D``).

Where the FFN output is not a single linear layer (Mixtral's experts) the map is fitted and folded
into every expert's down projection (the output is a gate-weighted sum of them, so the map passes
through exactly). Where the FFN output is normalised before the residual add (Gemma 2/3's
``post_feedforward_layernorm``), the norm fixes each token's output length, so only the direction
can be matched: the target of the projection is ``(y / g)`` rescaled per token to the length the
projection's output has now, ``y = h − r`` the wanted stream update and ``g`` the norm's gain; the
norm then restores ``y``'s direction exactly (residuals are reported in the space the fit acts on,
before the norm).

Both are solved in float64 from Gram matrices accumulated batch by batch on the model's device
(:class:`~miprun.healing_fit.RunningProducts`: float32 running sums under a ridge, float64 without
one; on a CPU with bfloat16 units the healing passes and those products multiply bfloat16 inputs
with float32 sums, :mod:`miprun.models.matmul_precision`, ``products`` option); the ridge ``λ`` is relative to
the Gram's mean diagonal and shrinks toward the weights the model already has (plain removal is
the prior). A cut starting at block 0 has no block before it: the
embedding output is mapped instead (``E ← E·T``, the ``"map"`` fit with the healer's ridge; learned
position tables, added to it, get the same map) — except where the output head shares the
embedding's weights (most small models): a map would untie the head and add the embedding's
parameters, so that cut's own fit is left out (the summary says why; ``untie_head=True`` unties
the head instead, its weights staying the original embedding), as it is where the embedding is
projected before the stream (OPT-350m); the blocks after the cut are refitted either way.
Cuts are fitted left to right, each on the states of the model already healed before it (the
earlier cuts skipped and their fits folded); the targets ``h`` are always the dense model's.

After each cut's fit (``after_cut``: :data:`AFTER_CUT` blocks by default for the refit), the
**attention output projections of the blocks after the cut** (``b + 1``, ``b + 2``, before the next
cut) are refitted the same way, one after the other on the healed model, so that the stream after
each one's attention — its input plus what the projection adds, through the attention output norm
where one follows (Gemma) — equals the dense model's there. The cut's own fit can only add a
linear function of block ``a − 1``'s FFN activations; these fits let the blocks after it re-weigh
what each of their heads, reading the repaired stream, writes back to it. They are read cheaply:
each capture replays a kept stream (block ``a − 1``'s input from the cut's own capture, then the
input of the block just refitted), so only a block or two run per fit. Families whose attention
output is not added on its own (GPT-NeoX's parallel blocks) skip them, and the summary says so.

The checkpoint keeps the architecture and the parameter count of plain removal (unless
``untie_head`` lets a cut at block 0 of a tied model untie the head: the embedding's size once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from miprun.errors import MiprunError
from miprun.healing_fit import (
    SINK_RULES,
    RunningProducts,
    cuts_of,
    embedding_refusal,
    embedding_rows,
    first_rows,
    fit_error,
    fit_rows,
    module_output,
    reweighted,
    ridge_solver,
    sink_weights,
    wanted_update,
    with_ones,
)
from miprun.models.adapters import (
    attention_output_modules,
    attention_output_name,
    ffn_output_modules,
    ffn_output_parts,
    parallel_field,
    residual_scale,
)
from miprun.models.devices import input_device, input_embedding, output_head
from miprun.models.forwards import hidden_argument, in_block_format, patched_forwards
from miprun.models.layerwise import editable_block, layerwise_loader
from miprun.models.matmul_precision import PRODUCT_RULES, fit_products, products_label
from miprun.models.sweep import BlockSweep, Stream
from miprun.models.weight_undo import UndoableEdits, WeightUndo
from miprun.probing import StopPass, forward_until, skipping

POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")
"""Module names of learned absolute position embeddings, added to the token embedding."""


def refittable(module: Any) -> bool:
    """Whether ``module`` is one linear layer whose weight a refit can replace (``nn.Linear`` or
    GPT-2's ``Conv1D``); otherwise only a map on its output can be folded into it."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def foldable(module: Any) -> bool:
    """Whether a hidden × hidden map on ``module``'s output can be folded into its weights: a linear
    layer, or experts whose stacked down projections (experts × out × in, or × in × out where the
    experts declare ``is_transposed``) are summed with no norm after each expert."""
    weight = getattr(module, "down_proj", None)
    stacked = isinstance(weight, torch.nn.Parameter) and weight.dim() == 3
    return refittable(module) or (stacked and not getattr(module, "has_post_expert_norm", False))


def check_healable(adapter: Any) -> None:
    """Refuse architectures where no fit can be folded: no FFN output module registered, or one
    whose parts are not all linear layers or stacked experts. The reason is one line."""
    for part in ffn_output_parts(adapter, 0):
        if not foldable(part):
            raise MiprunError(f"'{adapter.model_type}' adds its FFN output through {type(part).__name__}, into which "
                              f"no linear fit can be folded; run with --heal none")


FITS = ("projection", "map")
"""What a healer fits per cut: the down projection itself, or a hidden × hidden map on its output."""

DEFAULT_RIDGE = {"projection": 0.3, "map": 1e-4}
"""Default relative ridge per fit (docs/healing.md: how they were measured)."""

AFTER_CUT = 2
"""Blocks after each cut whose attention output projection the refit also refits by default
(docs/healing.md: 1, 2, 3, 5 and every block measured; 2 takes most of the gain, more fit the
healing text's domain and cost a block run each)."""


class LinearHealer(UndoableEdits):
    """Fit and fold one linear correction per cut (module docstring); :meth:`undo` puts back what
    :meth:`heal` folded (a head untied for a block-0 cut is tied again).

    :param fit: ``"projection"`` (refit the down projection before the cut from the FFN's hidden
        activations) or ``"map"`` (ReplaceMe: a hidden × hidden map on the FFN output).
    :param ridge: ridge added to the Gram matrix, relative to its mean diagonal entry, shrinking
        the fit toward the weights the model has; None takes :data:`DEFAULT_RIDGE` for ``fit``.
    :param batch_size: calibration sequences per forward batch (memory only).
    :param sequential: fit each cut on the model with the earlier cuts removed and healed (the
        default); False fits every cut on the dense model, as if it were the only one.
    :param after_cut: how many blocks after each cut get their attention output projection
        refitted, on the healed model (module docstring); None: :data:`AFTER_CUT` for the refit,
        0 (off) for ReplaceMe's map; True/False mean 1/0.
    :param after_cut_ridge: the relative ridge of that refit, toward the projection as it is.
    :param untie_head: let a cut at block 0 of a model whose output head shares the token embedding
        untie the head to map the embedding (adds the embedding's parameters); by default that
        cut's own fit is left out (:func:`~miprun.healing_fit.embedding_refusal`).
    :param sink: how every fit weighs each sequence's first token, the attention sink
        (:func:`~miprun.healing_fit.sink_weights`): ``average`` (default), one token of the other
        tokens' mean target energy; ``skip``, left out (earlier versions: on 24 healing sequences
        the refit of block 11 for a cut of 12–14 gave SmolLM2-135M WikiText-2 perplexity 142.7
        against 53.5 for plain removal, docs/healing.md). The ridge stays relative to the other
        rows' mean Gram diagonal.
    :param products: ``auto`` (default): where every fit has a ridge of at least
        :data:`~miprun.models.matmul_precision.RIDGE_FLOOR`, the healing passes and the
        fits' products multiply bfloat16 inputs with float32 sums on a CPU with bfloat16 units
        (:mod:`miprun.models.matmul_precision`; float32 models, in memory or layer-wise alike);
        ``float32``: the model's float32 multiplications. The selection's preview fits stay float32 either way.
    """

    def __init__(self, fit: str = "projection", ridge: float | None = None, batch_size: int = 4,
                 sequential: bool = True, after_cut: int | bool | None = None,
                 after_cut_ridge: float = DEFAULT_RIDGE["projection"], untie_head: bool = False,
                 products: str = "auto", sink: str = "average") -> None:
        if fit not in FITS:
            raise MiprunError(f"unknown healing fit '{fit}'; choose: {', '.join(FITS)}")
        if sink not in SINK_RULES:
            raise MiprunError(f"healer option sink={sink!r} must be one of {', '.join(SINK_RULES)}")
        self.sink = sink
        if products not in PRODUCT_RULES:
            raise MiprunError(f"healer option products={products!r} must be one of {', '.join(PRODUCT_RULES)}")
        self.products = products
        ridge = DEFAULT_RIDGE[fit] if ridge is None else ridge
        for name, value in (("heal ridge", ridge), ("after_cut_ridge", after_cut_ridge)):
            if not value >= 0:
                raise MiprunError(f"{name} must be ≥ 0, got {value!r}")
        self.fit = fit
        self.ridge = ridge
        if int(batch_size) < 1:
            raise MiprunError(f"healer option batch_size={batch_size!r} must be at least 1 sequence")
        self.batch_size = int(batch_size)
        self.sequential = sequential
        self.after_cut = (AFTER_CUT if fit == "projection" else 0) if after_cut is None else int(after_cut)
        if self.after_cut < 0:
            raise MiprunError(f"after_cut must be ≥ 0 blocks, got {after_cut!r}")
        self.after_cut_ridge = after_cut_ridge
        self.untie_head = bool(untie_head)

    def check(self, adapter: Any) -> None:
        """Refuse, in one line, an architecture no fit can be folded into (:func:`check_healable`)."""
        check_healable(adapter)

    def embedding_refusal(self, model: Any) -> str | None:
        """Why a cut at block 0 of ``model`` gets no fit of its own (its blocks after are still
        refitted), or None (:func:`~miprun.healing_fit.embedding_refusal`)."""
        return embedding_refusal(model, untie_head=self.untie_head)

    def heal(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor, *,
             known: Callable[[torch.Tensor], list[torch.Tensor] | None] | None = None) -> dict[str, Any]:
        """Fold one fit per cut of ``blocks`` into ``model`` (blocks still in place; the surgeon
        removes them afterwards). Returns the summary: per cut its residuals and fit time.

        :param known: ``known(batch)``: the dense model's block outputs the run already has for a
            forward batch of ``input_ids`` (every block's, or None for a batch it lacks) — the
            run's :class:`~miprun.probing.KnownOutputs`, which this healer's preview and the
            selection's race fill: the dense pass replays them instead of recomputing (only the
            blocks whose internals a fit reads then run) — unless the fit multiplies bfloat16
            (``products``), since those outputs are float32."""
        self._undo = WeightUndo() if layerwise_loader(model) is None else None
        return self._fit(model, adapter, blocks, input_ids, handles=None, known=known)

    def preview(self, model: Any, adapter: Any, fit_ids: torch.Tensor, *, context: Any = None) -> Any:
        """A :class:`~miprun.healing_preview.HealPreview`: this healer's fits for any block set,
        each cut fitted on the dense model over ``fit_ids``, cheap enough for a selector's search."""
        from miprun.healing_preview import HealPreview

        check_healable(adapter)
        return HealPreview(self, model, adapter, fit_ids, batch_size=self.batch_size, context=context)

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
             handles: list[Any] | None, known: Any = None) -> dict[str, Any]:
        """Fit the cuts of ``blocks`` in order; fold each fit (``handles`` None) or hook it in. The
        summary's ``products`` says what the fits' multiplications took (the ``products`` option)."""
        with fit_products(model, self.products, self.ridge, *([self.after_cut_ridge] if self.after_cut else [])) as used:
            # the selection's dense outputs are float32: in bfloat16 every target is computed afresh,
            # alike (so a layer-wise run, which has none to replay, saves the same checkpoint)
            summary = self._fit_cuts(model, adapter, blocks, input_ids, handles, None if used == "bfloat16" else known)
        summary["products"] = products_label(used, exact=self.ridge == 0)
        return summary

    def _fit_cuts(self, model: Any, adapter: Any, blocks: list[int], input_ids: torch.Tensor,
                  handles: list[Any] | None, known: Any) -> dict[str, Any]:
        """:meth:`_fit` within its products' precision."""
        check_healable(adapter)
        cuts = cuts_of(blocks)
        unmapped = self.embedding_refusal(model) if cuts and cuts[0][0] == 0 else None
        summary: dict[str, Any] = {"fit": self.fit, "ridge": self.ridge, "sink": self.sink, "tokens": 0, "cuts": []}
        afters = {cut: self.blocks_after(adapter, cut, cuts) for cut in cuts}
        if self.after_cut:
            summary["after_cut"] = self._after_cut_record(adapter)
        if not cuts:
            summary["sequential"] = self.sequential
            return summary
        if layerwise_loader(model) is None:  # the first cut's fit is read in the dense pass itself
            targets, first, mids = self._dense_pass(model, adapter, cuts, afters, self.kind_of(adapter, cuts[0]), input_ids,
                                                    known)
        else:
            (targets, mids), first = self._dense_targets(model, adapter, cuts, afters, input_ids), None
        pending: list[tuple[tuple[int, int], torch.Tensor, dict[str, Any], list]] = []
        for index, cut in enumerate(cuts):
            start = time.perf_counter()
            earlier = [b for first, last in cuts[:index] for b in range(first, last + 1)] if self.sequential else []
            kind = self.kind_of(adapter, cut)
            normal = first if index == 0 and first is not None else \
                self._accumulate(model, adapter, cut, kind, earlier, input_ids, targets[cut])
            gram, cross, before, energy, tokens = normal.gram, normal.cross, normal.before, normal.energy, normal.tokens
            prior = self.prior(adapter, cut, kind, gram)
            left_out = unmapped if cut[0] == 0 else None
            solution = prior if left_out else ridge_solver(gram, self.ridge, normal.scale)(cross, prior)
            after = before if left_out else fit_error(energy, gram, cross, solution)
            record = {"blocks": list(range(cut[0], cut[1] + 1)),
                      "fit": kind,
                      **({"not_fitted": left_out} if left_out else {}),
                      "relative_residual_before": (before / energy) ** 0.5,
                      "relative_residual_after": (after / energy) ** 0.5,
                      "seconds": round(time.perf_counter() - start, 3)}
            if cut[0] > 0 and ffn_output_modules(adapter, cut[0] - 1)[1] is not None:
                record["through_norm"] = adapter.spec.ffn_output_norm
            summary["tokens"] = tokens
            pending.append((cut, solution, record, normal.entries if self.sequential else []))
            if self.sequential:  # the next cut is fitted on the model healed so far
                self._heal_cut(model, adapter, pending.pop(), cuts[: index + 1], afters, mids, input_ids, handles, summary)
        for item in pending:  # independent fits: every one applied once all are fitted
            self._apply(model, adapter, item[:3], handles, summary)
        for index, item in enumerate(pending):  # then the blocks after the cuts, left to right
            self._refit_after(model, adapter, item[0], cuts[: index + 1], afters, mids, [], input_ids, handles,
                              summary["cuts"][index])
        summary["sequential"] = self.sequential
        return summary

    def _heal_cut(self, model: Any, adapter: Any, item: tuple, done: list[tuple[int, int]], afters: dict,
                  mids: dict, input_ids: torch.Tensor, handles: list[Any] | None, summary: dict[str, Any]) -> None:
        """Apply one cut's fit, then refit the blocks after it (the next cut sees all of them)."""
        self._apply(model, adapter, item[:3], handles, summary)
        self._refit_after(model, adapter, item[0], done, afters, mids, item[3], input_ids, handles, summary["cuts"][-1])

    def blocks_after(self, adapter: Any, cut: tuple[int, int], cuts: list[tuple[int, int]]) -> list[int]:
        """The blocks after ``cut`` whose attention output projections this healer refits: up to
        ``after_cut`` of them, before the next cut and the end; none where the architecture has no
        refittable attention output."""
        if not self.after_cut or self._after_cut_refusal(adapter):
            return []
        end = min([adapter.num_blocks] + [first for first, _ in cuts if first > cut[1]])
        chosen = []
        for after in range(cut[1] + 1, min(cut[1] + 1 + self.after_cut, end)):
            with editable_block(adapter, after):
                modules = attention_output_modules(adapter, after)
                if modules is None or not refittable(modules[0]):
                    return []
            chosen.append(after)
        return chosen

    def _after_cut_refusal(self, adapter: Any) -> str | None:
        """Why this architecture's attention output cannot be refitted after a cut, or None."""
        if not adapter.spec.attention_output:
            return f"'{adapter.model_type}' registers no attention output added to the stream on its own"
        parallel = parallel_field(adapter)
        if parallel:
            return (f"'{adapter.model_type}' runs attention and FFN in parallel ({parallel}=True): "
                    f"no attention output is added to the stream on its own")
        if getattr(adapter.block_config, "do_layer_norm_before", True) is False:
            return f"'{adapter.model_type}' normalises after the attention's residual add (post-norm)"
        return None

    def _after_cut_record(self, adapter: Any) -> dict[str, Any]:
        """The summary's ``after_cut`` entry: the module refitted and its ridge, or why not."""
        refusal = self._after_cut_refusal(adapter)
        if refusal is not None:
            return {"skipped": f"{refusal}: only the projection before each cut is refitted"}
        record = {"module": adapter.spec.attention_output, "blocks": self.after_cut, "ridge": self.after_cut_ridge}
        outputs = (attention_output_modules(adapter, index) for index in range(adapter.num_blocks))
        if any(found is not None and found[1] is not None for found in outputs):
            record["through_norm"] = adapter.spec.attention_output_norm
        return record

    def _refit_after(self, model: Any, adapter: Any, cut: tuple[int, int], done: list[tuple[int, int]], afters: dict,
                     mids: dict, entries: list, input_ids: torch.Tensor, handles: list[Any] | None,
                     record: dict[str, Any]) -> None:
        """Refit, in order, the attention output projections of the blocks after ``cut`` on the
        model healed so far (the blocks of ``done`` removed), each toward the dense stream after
        that block's attention (``mids[block]``), and fold them or hook them in; the cut's
        ``record`` gets their residuals (``after_cut``, one entry per block). Each capture replays
        the stream kept where the previous one started — block ``a − 1``'s input (``entries``, from
        the cut's own capture) for the first, the input of the block just refitted for the next — so
        only a block or two run per refit."""
        skipped = [b for first, last in done for b in range(first, last + 1)]
        begin = cut[0] - 1 if entries else 0  # block a − 1, whose input the cut's capture kept
        for after in afters.get(cut, []):
            start = time.perf_counter()
            normal = _Normal(exact=self.after_cut_ridge == 0, sink=self.sink)
            rows = self._after_captures(model, adapter, after, skipped, begin, entries, input_ids)
            for batch, target in zip(rows, mids[after]):
                normal.add(batch, target.double())
            begin, entries = after, normal.entries  # the next block's refit starts at this one
            with editable_block(adapter, after):
                output, _ = attention_output_modules(adapter, after)
                prior = _projection_rows(output, normal.gram)
            solution = ridge_solver(normal.gram, self.after_cut_ridge, normal.scale)(normal.cross, prior)
            if handles is None:
                with torch.no_grad(), editable_block(adapter, after):
                    output = attention_output_modules(adapter, after)[0]
                    self._keep(output, "weight", "bias")
                    _replace_projection(output, solution)
            else:
                handles.append(_refit_hook(attention_output_modules(adapter, after)[0], solution))
            error = fit_error(normal.energy, normal.gram, normal.cross, solution)
            record.setdefault("after_cut", []).append({
                "refitted": f"block {after} {attention_output_name(adapter, after)}",
                "relative_residual_before": (normal.before / normal.energy) ** 0.5,
                "relative_residual_after": (error / normal.energy) ** 0.5,
                "seconds": round(time.perf_counter() - start, 3)})

    def _after_captures(self, model: Any, adapter: Any, after: int, skipped: list[int], start: int,
                        entries: list, input_ids: torch.Tensor) -> Iterator[dict[str, Any]]:
        """Per batch, on the model healed so far with ``skipped`` removed, the rows of block
        ``after``: ``x`` its attention output projection's input, ``z``/``added``/``gain`` as for a
        cut's fit, ``rest`` the stream entering the block and ``entry`` that stream as the model
        computes it (where the next block's refit starts). The run starts at block ``start`` from
        ``entries`` (its input per batch; from the embedding when ``start`` is 0)."""
        output, norm = attention_output_modules(adapter, after)
        collected: list[dict[str, Any]] = []
        entering: list[torch.Tensor] = []

        def take(rows: dict[str, Any]) -> None:
            hidden = entering.pop()
            collected.append({**rows, "rest": fit_rows(hidden), "entry": hidden})

        loader = layerwise_loader(model)
        with ExitStack() as stack, torch.no_grad():
            stack.callback(_keep_input(adapter.blocks[after], entering.append).remove)
            stack.enter_context(_module_hooks(adapter.blocks[after], output, norm, "projection", take,
                                              residual_scale(adapter)))
            if loader is not None:
                sweep = BlockSweep(adapter, loader, input_ids, self.batch_size, input_device(model))
                stream = Stream(frozenset(skipped), start, (lambda: list(entries)) if start else None)
                sweep.run([stream], until=after + 1)
                yield from collected
                return
            stack.enter_context(skipping(adapter, [b for b in skipped if b >= start]))
            for index, batch in enumerate(self._batches(input_ids, input_device(model))):
                with patched_forwards(adapter, {block: _replaying(entries[index]) for block in range(start)}):
                    forward_until(norm if norm is not None else output,
                                  lambda batch=batch: adapter.backbone(input_ids=batch, use_cache=False))
                yield collected.pop()

    def kind_of(self, adapter: Any, cut: tuple[int, int]) -> str:
        """The fit of ``cut``: the healer's, except a map where a refit has no single linear layer
        to replace (a cut at block 0: the embedding; experts)."""
        if self.fit == "map" or cut[0] == 0:
            return "map"
        with editable_block(adapter, cut[0] - 1):
            return "projection" if refittable(ffn_output_modules(adapter, cut[0] - 1)[0]) else "map"

    def prior(self, adapter: Any, cut: tuple[int, int], kind: str, gram: torch.Tensor) -> torch.Tensor:
        """What the ridge shrinks toward: the identity for a map, the projection as it is (input ×
        output, a bias as the last row) for a refit."""
        if kind == "map":
            return torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        with editable_block(adapter, cut[0] - 1):
            return _projection_rows(ffn_output_modules(adapter, cut[0] - 1)[0], gram)

    def _apply(self, model: Any, adapter: Any, item: tuple, handles: list[Any] | None, summary: dict[str, Any]) -> None:
        """Fold the fit of ``item`` (``handles`` None) or hook it in, and record the cut."""
        cut, solution, record = item
        if "not_fitted" in record:  # plain removal for this cut (the identity map): nothing to fold
            record = {"folded_into": None, "untied_head": False, **record}
        elif handles is None:
            record = {**self._fold(model, adapter, cut, record["fit"], solution), **record}
        else:
            handles.extend(self.run_time_hooks(model, adapter, cut, record["fit"], solution))
            record = {"applied_at_run_time": True, **record}
        summary["cuts"].append(record)

    def _keep(self, module: Any, *names: str) -> None:
        """Record ``module``'s tensors for :meth:`undo` before a fold changes them."""
        if self._undo is not None:
            self._undo.keep(module, *names)

    def run_time_hooks(self, model: Any, adapter: Any, cut: tuple[int, int], kind: str, solution: torch.Tensor) -> list[Any]:
        """Forward hooks giving the modules the fit would be folded into (the FFN output module
        before the cut, or the embedding tables) the output the folded modules would give."""
        modules = [ffn_output_modules(adapter, cut[0] - 1)[0]] if cut[0] > 0 else _embedding_tables(model)
        return [_refit_hook(module, solution, refit=kind == "projection") for module in modules]

    def _batches(self, input_ids: torch.Tensor, device: torch.device):
        for start in range(0, input_ids.shape[0], self.batch_size):
            yield input_ids[start : start + self.batch_size].to(device)

    def _dense_targets(self, model: Any, adapter: Any, cuts: list[tuple[int, int]], afters: dict,
                       input_ids: torch.Tensor) -> tuple[dict, dict]:
        """Layer-wise: the dense stream after the last block of every cut, per batch (float64 rows,
        CPU), and after the attention of the block after it (:meth:`_mid_hooks`), block-major
        (every block read once for all batches)."""
        targets: dict[tuple[int, int], list[torch.Tensor]] = {cut: [] for cut in cuts}
        mids: dict[int, list[torch.Tensor]] = {after: [] for blocks in afters.values() for after in blocks}
        sweep = BlockSweep(adapter, layerwise_loader(model), input_ids, self.batch_size, input_device(model))
        stream = Stream(frozenset())
        ends = {cut[1] + 1: cut for cut in cuts}

        def keep(boundary: int) -> None:
            if boundary in ends:
                targets[ends[boundary]] = [fit_rows(hidden).cpu() for hidden in stream.states]

        with ExitStack() as stack:
            for after, kept in mids.items():
                stack.enter_context(self._mid_hooks(adapter, after, kept.append))
            sweep.run([stream], on_boundary=keep, until=max(list(ends) + [after + 1 for after in mids]))
        return targets, mids

    @contextmanager
    def _mid_hooks(self, adapter: Any, after: int, take: Any) -> Iterator[None]:
        """Hooks handing ``take``, per batch, the stream after block ``after``'s attention (its input
        plus what the attention adds, after the output norm if any) as float32 CPU rows."""
        entering: list[torch.Tensor] = []
        output, norm = attention_output_modules(adapter, after)

        def take_input(module, args, kwargs):
            entering.append(fit_rows(hidden_argument(args, kwargs)))

        handle = adapter.blocks[after].register_forward_pre_hook(take_input, with_kwargs=True)
        try:
            with _module_hooks(adapter.blocks[after], output, norm, "map",
                               lambda rows: take((entering.pop() + rows["added"]).float().cpu()), residual_scale(adapter)):
                yield
        finally:
            handle.remove()

    def _dense_pass(self, model: Any, adapter: Any, cuts: list[tuple[int, int]], afters: dict, kind: str,
                    input_ids: torch.Tensor, known: Any = None) -> tuple[dict, _Normal, dict]:
        """One pass of the dense model, stopped after the last cut (after the attention of the block
        after it, when that is refitted): the targets of every cut (per batch, float64 rows, CPU;
        the first cut's are used at once), the first cut's normal equations — its fit acts on the
        dense model, so what it reads is taken in the same pass — and the targets of the refits
        after the cuts (:meth:`_mid_hooks`). A batch whose block outputs ``known`` gives runs only
        block ``a − 1`` of the first cut and the refitted blocks; the others return their known
        output (their hooks still see it)."""
        cut = cuts[0]
        targets: dict[tuple[int, int], list[torch.Tensor]] = {later: [] for later in cuts[1:]}
        mids: dict[int, list[torch.Tensor]] = {after: [] for blocks in afters.values() for after in blocks}
        normal = _Normal(exact=self.ridge == 0, sink=self.sink)
        current: dict[str, Any] = {}
        with ExitStack() as stack, torch.no_grad():
            if cut[0] > 1:  # block a − 1's input: where the refit after the cut starts its run
                stack.callback(_keep_input(adapter.blocks[cut[0] - 1], lambda hidden: current.update(entry=hidden)).remove)
            if cut[0] == 0:
                def take_input(module, args, kwargs):
                    current.update(embedding_rows(args, kwargs))
                stack.callback(adapter.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True).remove)
            else:
                stack.enter_context(self.ffn_hooks(adapter, cut[0] - 1, kind, current.update))

                def take_rest(module, args, out):
                    current["rest"] = fit_rows(module_output(out)) - current["added"]
                stack.callback(adapter.blocks[cut[0] - 1].register_forward_hook(take_rest).remove)
            stack.callback(adapter.blocks[cut[1]].register_forward_hook(
                lambda m, a, out: normal.add(current, fit_rows(module_output(out)))).remove)
            for later in cuts[1:]:
                stack.callback(adapter.blocks[later[1]].register_forward_hook(
                    lambda m, a, out, later=later: targets[later].append(fit_rows(module_output(out)).cpu())).remove)
            for after, kept in mids.items():
                stack.enter_context(self._mid_hooks(adapter, after, kept.append))
            last = max(mids, default=-1)  # after the last cut's end only if that cut has blocks after it refitted
            stop = adapter.blocks[cuts[-1][1]] if last < cuts[-1][1] else \
                next(m for m in reversed(attention_output_modules(adapter, last)) if m is not None)
            computed = {cut[0] - 1, *mids}  # the blocks whose internals the pass reads
            for batch in self._batches(input_ids, input_device(model)):  # each stopped after the last cut
                outputs = known(batch) if known is not None else None
                replay = {} if outputs is None else \
                    {index: _replaying(outputs[index]) for index in range(len(outputs)) if index not in computed}
                with patched_forwards(adapter, replay):
                    forward_until(stop, lambda batch=batch: adapter.backbone(input_ids=batch, use_cache=False))
        return targets, normal, mids

    def _captures(self, model: Any, adapter: Any, cut: tuple[int, int], kind: str, earlier: list[int],
                  input_ids: torch.Tensor) -> Iterator[dict[str, torch.Tensor | None]]:
        """Per batch, on the model healed so far (the earlier cuts skipped), float64 rows (``x`` of
        a refit in the model's dtype, converted where the fit multiplies): ``x``
        what the fit acts on (block ``a − 1``'s FFN hidden activations for a refit, its FFN output
        for a map, the embedding output for a cut at block 0), ``z`` the FFN output module's output,
        ``added`` what the FFN adds to the stream (``z`` after the output norm, if any), ``gain``
        that norm's per-channel gain (None without one) and ``rest`` the rest of the stream entering the cut (None at 0)."""
        first = cut[0]
        loader = layerwise_loader(model)
        if loader is not None:
            yield from self._captures_layerwise(loader, adapter, cut, kind, earlier, input_ids)
            return
        captured: dict[str, Any] = {}
        with ExitStack() as stack, torch.no_grad():
            if first == 0:  # the map acts on the embedding output: block 0's input
                def take_input(module, args, kwargs):
                    captured.update(embedding_rows(args, kwargs))
                    raise StopPass
                hook = adapter.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True)
            else:
                stack.enter_context(self.ffn_hooks(adapter, first - 1, kind, captured.update))
                if first > 1:  # block a − 1's input: where the refit after the cut starts its run
                    stack.callback(_keep_input(adapter.blocks[first - 1], lambda hidden: captured.update(entry=hidden)).remove)

                def take_output(module, args, out):
                    captured["rest"] = fit_rows(module_output(out)) - captured["added"]
                    raise StopPass
                hook = adapter.blocks[first - 1].register_forward_hook(take_output)
            stack.callback(hook.remove)
            stack.enter_context(skipping(adapter, earlier))
            for batch in self._batches(input_ids, input_device(model)):
                try:
                    adapter.backbone(input_ids=batch, use_cache=False)
                except StopPass:
                    pass
                yield dict(captured)

    def _captures_layerwise(self, loader: Any, adapter: Any, cut: tuple[int, int], kind: str, earlier: list[int],
                            input_ids: torch.Tensor) -> Iterator[dict[str, torch.Tensor | None]]:
        """:meth:`_captures` block-major: one sweep up to the cut reads each block once."""
        first = cut[0]
        sweep = BlockSweep(adapter, loader, input_ids, self.batch_size, input_device(adapter.model))
        if first == 0:
            for hidden in sweep.inputs:
                rows = fit_rows(hidden)
                yield {"x": rows, "z": rows, "added": rows, "gain": None, "rest": None, "sequences": hidden.shape[0]}
            return
        stream = Stream(frozenset(earlier))
        captured: list[dict[str, Any]] = []
        entries: list[torch.Tensor] = []

        def keep(boundary: int) -> None:  # block a − 1's input: where the refit after the cut starts
            if boundary == first - 1 and boundary > 0:
                entries[:] = list(stream.states)

        with self.ffn_hooks(adapter, first - 1, kind, lambda rows: captured.append(rows)):
            sweep.run([stream], on_boundary=keep, until=first)
        for index, (rows, hidden) in enumerate(zip(captured, stream.states)):
            yield {**rows, "rest": fit_rows(hidden) - rows["added"], "entry": entries[index] if entries else None}

    @contextmanager
    def ffn_hooks(self, adapter: Any, index: int, kind: str, take: Any) -> Iterator[None]:
        """Hooks on block ``index``'s FFN output module (and its output norm) that hand ``take``
        the rows of one batch once both have run: ``x``, ``z``, ``added`` and ``gain``
        (:func:`_module_hooks`)."""
        output, norm = ffn_output_modules(adapter, index)
        with _module_hooks(adapter.blocks[index], output, norm, kind, take, residual_scale(adapter)):
            yield

    def _accumulate(self, model: Any, adapter: Any, cut: tuple[int, int], kind: str, earlier: list[int],
                    input_ids: torch.Tensor, targets: list[torch.Tensor]) -> _Normal:
        """The normal equations of ``cut`` on the model healed so far (the earlier cuts skipped)."""
        normal = _Normal(exact=self.ridge == 0, sink=self.sink)
        for rows, target in zip(self._captures(model, adapter, cut, kind, earlier, input_ids), targets):
            normal.add(rows, target)
        return normal

    def _fold(self, model: Any, adapter: Any, cut: tuple[int, int], kind: str, solution: torch.Tensor) -> dict[str, Any]:
        """Fold ``solution`` into the FFN output module before the cut, or into the embedding tables."""
        with torch.no_grad():
            if cut[0] > 0:
                with editable_block(adapter, cut[0] - 1):
                    if kind == "projection":
                        down, _ = ffn_output_modules(adapter, cut[0] - 1)
                        self._keep(down, "weight", "bias")
                        _replace_projection(down, solution)
                    else:
                        for part in ffn_output_parts(adapter, cut[0] - 1):
                            self._keep(part, "weight", "bias", "down_proj", "down_proj_bias")  # stacked experts
                            _fold_map(part, solution)
                return {"folded_into": f"block {cut[0] - 1} {adapter.spec.ffn_output}", "untied_head": False}
            embedding = input_embedding(model)
            untied = False
            head = output_head(model)
            if head is not None and head.weight is embedding.weight:
                if self._undo is not None:
                    self._undo.point(head, "weight")
                    self._undo.point(model.config, "tie_word_embeddings")
                head.weight = torch.nn.Parameter(embedding.weight.detach().clone())
                model.config.tie_word_embeddings = False
                untied = True
            tables = _embedding_tables(model)
            for table in tables:
                self._keep(table, "weight")
                table.weight.copy_((table.weight.double() @ solution.to(table.weight.device)).to(table.weight.dtype))
            names = ", ".join(name for name, module in model.named_modules() if any(module is t for t in tables))
            return {"folded_into": names, "untied_head": untied}


@contextmanager
def _module_hooks(block: Any, output: Any, norm: Any, kind: str, take: Any, scale: float = 1.0) -> Iterator[None]:
    """Hooks on ``output`` (a module whose output ``block`` adds to the stream) and its ``norm``
    (None without one) that hand ``take`` the rows of one batch once both have run: ``x`` what a fit
    of ``kind`` acts on (the module's input, with a column of ones for a bias, for a refit; its
    output for a map), ``z`` its output, ``added`` what reaches the stream (``z`` after the norm,
    times the block's residual ``scale``), ``scale`` and ``gain`` the norm's per-channel gain (None
    without one). Rows are float64 but a refit's ``x`` (FFN-wide), kept in the model's dtype: the
    fit converts it where it multiplies. Outputs flattened to tokens × features (OPT, experts) are
    read in the block's batch shape."""
    rows: dict[str, Any] = {}
    shape: list[int] = []

    def tokens(value: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return fit_rows(value.reshape(*shape, value.shape[-1]), dtype)

    def on_block(module, args, kwargs):
        shape[:] = hidden_argument(args, kwargs).shape[:2]

    def on_output(module, args, out):
        z = tokens(module_output(out))
        x = z if kind == "map" else tokens(args[0], args[0].dtype)  # FFN-wide: converted where the fit multiplies
        if kind != "map" and getattr(module, "bias", None) is not None:
            x = with_ones(x)
        rows.update(x=x, z=z, gain=None, scale=scale, sequences=shape[0])
        if norm is None:
            take({**rows, "added": z * scale})

    def on_norm(module, args, out):
        take({**rows, "added": tokens(module_output(out)) * scale, "gain": _gain(module, rows["z"].shape[-1])})

    handles = [block.register_forward_pre_hook(on_block, with_kwargs=True), output.register_forward_hook(on_output)]
    if norm is not None:
        handles.append(norm.register_forward_hook(on_norm))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replaying(hidden: torch.Tensor) -> Any:
    """A forward factory (:func:`~miprun.models.forwards.patched_forwards`) for a block that
    returns ``hidden``, its known output, instead of computing it."""

    def factory(block: Any, original: Any) -> Any:
        return lambda *args, **kwargs: in_block_format(block, original, args, kwargs, hidden)

    return factory


def _keep_input(block: Any, take: Any) -> Any:
    """A forward pre-hook on ``block`` handing ``take`` the hidden states it is called with, kept as
    they are (the batch's shape and dtype): where a refit after a cut starts its run. Returns the handle."""
    return block.register_forward_pre_hook(
        lambda module, args, kwargs: take(hidden_argument(args, kwargs).detach()), with_kwargs=True)


def _projection_rows(module: Any, like: torch.Tensor) -> torch.Tensor:
    """A linear layer's weights as a refit's unknowns: input (+ a bias row) × output, float64 on
    ``like``'s device."""
    weight = module.weight.detach().to(like.device, torch.float64)
    rows = weight.T if isinstance(module, torch.nn.Linear) else weight
    if getattr(module, "bias", None) is not None:
        rows = torch.cat([rows, module.bias.detach().to(like.device, torch.float64)[None]])
    return rows


def _refit_hook(module: Any, solution: torch.Tensor, *, refit: bool = True) -> Any:
    """A forward hook giving ``module`` the output it would have with ``solution`` folded in: a
    refit (input (+ bias row) × output, applied to its input) or a map on its output."""

    def apply(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        value = args[0].double() if refit else out.double()
        if value.shape[-1] < solution.shape[0]:  # the refit's bias row
            value = with_ones(value)
        return (value @ solution.to(out.device)).to(out.dtype)

    return module.register_forward_hook(apply)


class _Normal:
    """One fit, accumulated batch by batch on the model's device: ``gram`` XᵀX and ``cross`` XᵀY
    (float64, from :class:`~miprun.healing_fit.RunningProducts`), ``before`` the plain removal's
    ‖Z − Y‖², ``energy`` ‖Y‖², ``tokens`` (the rows that count) and ``entries`` (the ``entry``
    rows, where a later refit starts). X is what the fit acts on, Z what the module gives as it is,
    Y what it should give: the wanted update ``target − rest``, through :func:`through_norm` when an
    output norm follows. Each sequence's first row (the attention sink) is weighted by ``sink``'s
    rule (:func:`~miprun.healing_fit.sink_weights`), in X, Y and Z alike.

    :param exact: products in float64; otherwise (fits under a ridge, which bounds the system's
        conditioning) in float32 — twice as fast.
    :param sink: :data:`~miprun.healing_fit.SINK_RULES`: ``average`` or ``skip``.
    """

    def __init__(self, exact: bool = True, sink: str = "average") -> None:
        self.exact = exact
        self.sink = sink
        self.products = RunningProducts()
        self.before = self.energy = 0.0
        self.tokens = 0
        self.entries: list[torch.Tensor] = []
        self._sink_diagonal: torch.Tensor | float = 0.0

    @property
    def scale(self) -> float:
        """The mean diagonal of the Gram over every row but the weighted first ones: what the
        ridge is relative to (so the sink rows, however weighted, do not set it; the healing
        preview adds them to a system factorised without them, :func:`~miprun.healing_fit.ridge_solver`)."""
        return float((self.gram.diagonal() - self._sink_diagonal).mean())

    @property
    def gram(self) -> torch.Tensor | None:
        """XᵀX so far (float64)."""
        return self.products.gram

    @property
    def cross(self) -> torch.Tensor | None:
        """XᵀY so far (float64)."""
        return self.products.cross

    def add(self, rows: dict[str, Any], target: torch.Tensor) -> None:
        """Add one batch: ``rows`` as :meth:`LinearHealer._captures` gives them, ``target`` the
        dense stream after the cut."""
        x, z = rows["x"], rows["z"]
        x = x.double() if self.exact else x.float()
        y = wanted_update(rows, target)
        first = first_rows(y.shape[0], rows["sequences"], y.device)
        weights = sink_weights(y.pow(2).sum(-1), rows["sequences"], self.sink)
        x, y, z = (reweighted(v, first.to(v.device), weights.to(v.device)) for v in (x, y, z))
        self.products.add(x, y)
        self._sink_diagonal = self._sink_diagonal + x[first.to(x.device)].double().pow(2).sum(0)
        self.before += float((z - y).pow(2).sum())
        self.energy += float(y.pow(2).sum())
        self.tokens += x.shape[0] - int((weights == 0).sum())
        if rows.get("entry") is not None:  # block a − 1's input, for the refit after the cut
            self.entries.append(rows["entry"])


def _gain(norm: Any, width: int) -> torch.Tensor:
    """A norm's per-channel gain, read as its output for a vector of ones (float64; ``forward``
    itself, so that no hook on the norm sees the probe)."""
    weight = next(norm.parameters())
    with torch.no_grad():
        return norm.forward(torch.ones(1, width, dtype=weight.dtype, device=weight.device))[0].double()


def _replace_projection(down: Any, solution: torch.Tensor) -> None:
    """Replace a linear layer's weight (and bias, the solution's last row) by a refit solution
    (input (+ bias) × output)."""
    t = solution.to(down.weight.device)
    bias = getattr(down, "bias", None)
    inputs = down.weight.shape[1] if isinstance(down, torch.nn.Linear) else down.weight.shape[0]
    if bias is not None:
        bias.copy_(t[-1].to(bias.dtype))
    weight = t[:inputs]
    # y = x·Wᵀ + b for nn.Linear; GPT-2's Conv1D: y = x·W + b
    down.weight.copy_((weight.T if isinstance(down, torch.nn.Linear) else weight).to(down.weight.dtype))


def _fold_map(module: Any, solution: torch.Tensor) -> None:
    """Compose a hidden × hidden map ``T`` with ``module``'s output: ``y·T``, folded into its weights."""
    t = solution.to(module.weight.device if hasattr(module, "weight") else module.down_proj.device)
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias.copy_((bias.double() @ t).to(bias.dtype))
    if isinstance(module, torch.nn.Linear):  # W (out × in) → Tᵀ·W
        module.weight.copy_((t.T @ module.weight.double()).to(module.weight.dtype))
    elif refittable(module):  # Conv1D: W (in × out) → W·T
        module.weight.copy_((module.weight.double() @ t).to(module.weight.dtype))
    else:  # experts: stacked down projections, each → Tᵀ·W (experts × out × in) or W·T (× in × out)
        down = module.down_proj.double()
        module.down_proj.copy_((down @ t if getattr(module, "is_transposed", False) else t.T @ down).to(module.down_proj.dtype))
        expert_bias = getattr(module, "down_proj_bias", None)  # experts × out
        if expert_bias is not None:
            expert_bias.copy_((expert_bias.double() @ t).to(expert_bias.dtype))


def _embedding_tables(model: Any) -> list[Any]:
    """The tables added together into block 0's input: the token embedding and any learned
    position embedding."""
    tables = [input_embedding(model)]
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in POSITION_TABLES and isinstance(module, torch.nn.Embedding):
            tables.append(module)
    return tables


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
