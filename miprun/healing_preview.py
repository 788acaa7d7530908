"""Healing previews: what the linear healer would make of any block set, cheap enough for search.

A selector that explores block sets (``set-exchange``) asks for dozens of sets; healing each one as
:class:`~miprun.healing.LinearHealer` does (a dense pass, then a pass per cut) would cost a pass
per set. A preview answers the same question from shared work:

* one dense pass over the preview's sequences keeps every block's output (the targets of every cut
  ``[a, b]`` are the dense stream after block ``b``);
* the first time a cut starts at block ``a``, block ``a − 1`` alone is run once, on its kept dense
  input, to read what the fit acts on (its FFN activations), and the Gram matrix is factorised;
* each cut ``[a, b]`` is then one cross product and one triangular solve — and, for the sequences'
  first tokens (the attention sink, weighted by the cut's own target energy as the healer weighs
  them, :func:`~miprun.healing_fit.sink_weights`), a solve of as many unknowns as sequences that
  adds their rows to the factorised system (:func:`~miprun.healing_fit.ridge_solver`).

The fits are the healer's own (same fit kind per family, same ridge, same prior, the output norm
handled the same way) but each cut is fitted on the *dense* model, as if it were the only one — the
healer's ``sequential=False`` — where the healer itself fits cuts left to right on the model healed
so far, and the refits of the blocks after each cut (the healer's ``after_cut``) are not previewed. Within :meth:`HealPreview.applied` they act at run time through the healer's forward hooks,
so any forward pass (the scorer's) sees the healed, pruned model. The preview's sequences must be
other than those the selection judges on: a fit judged on its own tokens rewards fitting more
(docs/healing.md), so the engine hands it healing sequences that are not calibration sequences.

What is kept: the dense block outputs over the preview's sequences (hidden size × tokens × blocks,
in the model's dtype) and, within ``cache_bytes``, the blocks' activations and factors and the
cuts' fits (least recently used fits dropped first, then inputs; recomputed if asked again).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch

from miprun.healing_fit import (
    cuts_of,
    embedding_rows,
    first_rows,
    fit_rows,
    gram_matrix,
    module_output,
    reweighted,
    ridge_solver,
    sink_weights,
    wanted_update,
)


class HealPreview:
    """Fits of the linear healer for any cut, from one dense pass over ``fit_ids`` (module docstring).

    :param healer: the :class:`~miprun.healing.LinearHealer` whose fits are previewed.
    :param fit_ids: the sequences the fits are made on (n × L token ids).
    :param batch_size: sequences per forward batch (memory only).
    :param context: the run's context; the preview's passes count as forward passes there.
    :param cache_bytes: memory for the fits' inputs, factors and solutions kept between calls (least
        recently used dropped first), and, besides, for the inputs captured in the dense pass.
    """

    def __init__(self, healer: Any, model: Any, adapter: Any, fit_ids: torch.Tensor, *, batch_size: int = 4,
                 context: Any = None, cache_bytes: int = 2 * 2**30) -> None:
        from miprun.probing import Prober

        self.healer = healer
        self.model = model
        self.adapter = adapter
        self.fit_ids = fit_ids
        self.cache_bytes = cache_bytes
        self._prober = Prober(model, adapter, fit_ids, batch_size=batch_size, context=context)
        self._dense = False
        self._cache: OrderedDict[Any, Any] = OrderedDict()
        self._captured: dict[int, list[dict[str, Any]]] = {}
        self.fitted: set[tuple[int, int]] = set()
        self._mappable: bool | None = None

    def info(self) -> dict[str, Any]:
        """What the preview did: its sequences, tokens, the cuts it fitted and its model calls."""
        return {"fit_sequences": int(self.fit_ids.shape[0]), "fit": self.healer.fit, "ridge": self.healer.ridge,
                "sink": self.healer.sink,
                "sequential": False, "cuts_fitted": len(self.fitted), "passes": self._prober.passes,
                "refits_after_cut": "not previewed (each cut's own fit only)"}

    @contextmanager
    def applied(self, blocks: Any) -> Iterator[int | None]:
        """Within the ``with`` block, the previewed fit of every cut of ``blocks`` acts at run time.
        Yields the first block whose output the fits change (``a − 1`` of the first cut ``[a, b]``,
        0 for a cut at block 0 — the embedding changes), None when ``blocks`` is empty."""
        cuts = cuts_of(list(blocks))
        handles: list[Any] = []
        try:
            for cut in cuts:
                if cut[0] == 0 and not self._embedding_mappable():
                    continue  # the healer leaves this cut's own fit out (its summary says why): judged as plain removal
                kind, solution = self._fit(cut)
                handles.extend(self.healer.run_time_hooks(self.model, self.adapter, cut, kind, solution))
            yield max(cuts[0][0] - 1, 0) if cuts else None
        finally:
            for handle in handles:
                handle.remove()

    def release(self, keep_dense: bool = False) -> None:
        """Free the fits' inputs, factors and solutions and the captured rows — and, unless
        ``keep_dense``, the dense block outputs. The run calls it once the selection, then the
        heal, no longer reads them; a preview asked again recomputes what it needs. (The dense
        outputs its prober shared with the run, :attr:`~miprun.contracts.RunContext.dense`, are
        the run's to let go.)"""
        self._cache.clear()
        self._captured.clear()
        if not keep_dense:
            self._prober.release()
            self._dense = False

    def _embedding_mappable(self) -> bool:
        """Whether the healer fits a cut at block 0 (:meth:`~miprun.healing.LinearHealer.embedding_refusal`)."""
        if self._mappable is None:
            self._mappable = self.healer.embedding_refusal(self.model) is None
        return self._mappable

    def _fit(self, cut: tuple[int, int]) -> tuple[str, torch.Tensor]:
        """The fit kind and solution of ``cut`` (cached)."""
        key = ("fit", cut)
        if key not in self._cache:
            kind, solve, rows = self._inputs(cut[0])
            wanted = wanted_update(rows, self._target(cut[1], rows["x"].dtype))
            energy = wanted.pow(2).sum(-1).split([count * rows["length"] for count in rows["batches"]])
            weights = torch.cat([sink_weights(part, count, self.healer.sink) for part, count in zip(energy, rows["batches"])])
            first = rows["first"]
            # the first rows weigh w: w² in XᵀY, and w·x as rows added to the factorised system
            cross = (rows["x"].T @ reweighted(wanted, first, weights.pow(2))).double()
            sink = rows["x"][first].double() * weights[:, None]
            solution = solve(cross, self.healer.prior(self.adapter, (cut[0], cut[0]), kind, cross), sink)
            self._keep(key, (kind, solution))
            self.fitted.add(cut)
        self._cache.move_to_end(key)
        return self._cache[key]

    def _target(self, last: int, dtype: torch.dtype) -> torch.Tensor:
        """The dense stream after block ``last`` over the preview's tokens (rows of ``dtype``, CPU)."""
        self._ensure_dense()
        return torch.cat([fit_rows(hidden, dtype).cpu() for hidden in self._prober.dense_outputs(last)])

    def _ensure_dense(self) -> None:
        """The dense pass: every block's output kept; what every block's cuts read captured in the
        same pass when it fits in ``cache_bytes`` (read later, one block run each, otherwise)."""
        if self._dense:
            return
        room = [self.cache_bytes]
        with ExitStack() as stack:
            for first in range(self.adapter.num_blocks):
                stack.enter_context(self._reading(first, self._captured.setdefault(first, []), room))
            self._prober.output_states(reuse_prefix=True)  # keeps every block's dense output
        self._dense = True

    @contextmanager
    def _reading(self, first: int, batches: list[Any], room: list[int] | None = None) -> Iterator[None]:
        """Hooks appending to ``batches``, per forward batch, what cuts starting at block ``first``
        read (float32 CPU rows): ``x`` what the fit acts on, ``rest`` the stream entering the cut
        less block ``first − 1``'s FFN addition, ``z`` and ``gain`` where an output norm follows.
        With ``room`` (bytes left, shared by several readers) a reader that would overflow it gives
        its rows back and stops: ``batches`` is then left empty (None as its first item)."""
        kind = self.healer.kind_of(self.adapter, (first, first))

        def keep(rows: dict[str, Any]) -> None:
            if batches[:1] == [None]:
                return
            kept = {name: value.float().cpu() if isinstance(value, torch.Tensor) else value
                    for name, value in rows.items() if name != "added" and (name != "z" or rows.get("gain") is not None)}
            if room is not None:
                room[0] -= _bytes(kept)
                if room[0] < 0:
                    room[0] += _bytes(kept) + sum(_bytes(b) for b in batches)
                    batches[:] = [None]
                    return
            batches.append(kept)

        if first == 0:
            def take_input(module: Any, args: Any, kwargs: Any) -> None:
                keep(embedding_rows(args, kwargs))
            handle = self.adapter.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True)
            try:
                yield
            finally:
                handle.remove()
            return

        pending: dict[str, Any] = {}

        def take_rest(module: Any, args: Any, out: Any) -> None:
            keep({**pending, "rest": fit_rows(module_output(out)) - pending.pop("added")})

        handle = self.adapter.blocks[first - 1].register_forward_hook(take_rest)
        try:
            with self.healer.ffn_hooks(self.adapter, first - 1, kind, pending.update):
                yield
        finally:
            handle.remove()

    def _inputs(self, first: int) -> tuple[str, Any, dict[str, Any]]:
        """For cuts starting at block ``first``: the fit kind, the factorised ridge system and the
        rows the fit reads (:meth:`_reading`), captured in the dense pass or read by one run of
        block ``first − 1`` on its kept dense input."""
        key = ("inputs", first)
        if key not in self._cache:
            self._ensure_dense()
            batches = self._captured.pop(first, None)
            if not batches or batches[0] is None:
                batches = []
                with self._reading(first, batches):
                    self._prober.run_until(max(first - 1, 0))
            rows = {name: None if batches[0].get(name) is None else torch.cat([b[name] for b in batches])
                    for name in ("x", "z", "rest")}
            rows["gain"], rows["scale"] = batches[0]["gain"], batches[0].get("scale", 1.0)
            rows["batches"] = [b["sequences"] for b in batches]
            rows["length"] = rows["x"].shape[0] // sum(rows["batches"])
            rows["first"] = first_rows(rows["x"].shape[0], sum(rows["batches"]))
            ordinary = torch.ones(rows["x"].shape[0], dtype=torch.bool)
            ordinary[rows["first"]] = False
            kind = self.healer.kind_of(self.adapter, (first, first))
            # float32 products: a preview; the ridge bounds the conditioning. The sink rows' weights
            # depend on each cut's target: they join the system per cut (:meth:`_fit`)
            gram = gram_matrix(rows["x"][ordinary])
            self._keep(key, (kind, ridge_solver(gram, self.healer.ridge), rows))
        self._cache.move_to_end(key)
        return self._cache[key]

    def _keep(self, key: Any, value: Any) -> None:
        """Cache ``value``; beyond ``cache_bytes``, drop the least recently used fits first (a
        product and a solve each), then the least recently used inputs (a block run, a Gram and
        its factorisation each)."""
        self._cache[key] = value
        while len(self._cache) > 1 and sum(_bytes(v) for v in self._cache.values()) > self.cache_bytes:
            oldest = next((k for k in self._cache if k[0] == "fit" and k != key), next(iter(self._cache)))
            del self._cache[oldest]


def _bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (tuples, dicts and solver closures included)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_bytes(v) for v in value)
    cells = getattr(value, "__closure__", None) or ()
    return sum(_bytes(cell.cell_contents) for cell in cells)
