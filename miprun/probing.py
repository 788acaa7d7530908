"""Probing the model on calibration tokens: loss, perplexity and hidden states with blocks skipped.

The criteria that *run* the model — SLEB, the perplexity-drop criterion of Shortened LLaMA, Taylor
importance, LaCo's similarity check, the last-token angular distance — share this one utility so
that they skip blocks the same way and count their cost the same way.

* **Skipping** a block replaces its ``forward`` by the identity on the residual stream for the
  duration of a ``with`` block: the block list, ``layer_idx`` values and per-layer config lists
  (``layer_types``) stay untouched, so every other block still gets its own attention mask and
  rotary embedding. The result is exactly the model with those blocks removed.
* **Overriding** replaces some parameters of a block for the duration of a ``with`` block (LaCo's
  merged layers) and restores them afterwards, bit for bit.
* **Counting**: one *forward pass* is one pass of the model over all calibration sequences (however
  many batches that takes), the unit :class:`~miprun.contracts.RunContext` uses; every probe adds
  one call to the prober and its share of the run's sequences to the run's context (a probe over
  1 of 16 sequences adds 1/16).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch

from miprun.collectors.hidden_states import capture_boundaries
from miprun.errors import MiprunError
from miprun.models.devices import input_device, logits_batch
from miprun.models.forwards import (
    checked_blocks,
    in_block_format,
    module_state,
    overriding,
    patched_forwards,
    skipping,
)
from miprun.models.layerwise import layerwise_loader
from miprun.models.sweep import BlockSweep, BoundarySpill, Stream


class StopPass(Exception):
    """Raised by a forward hook to abandon the rest of a forward pass once what it needs is read."""


def _raise_stop(module: Any, args: Any, out: Any) -> None:
    raise StopPass


def forward_until(module: Any, call: Callable[[], Any]) -> None:
    """Run ``call`` (a forward pass) and abandon it once ``module`` has run; hooks registered on
    ``module`` before this call still see its output."""
    handle = module.register_forward_hook(_raise_stop)  # registered last: runs after the caller's
    try:
        call()
    except StopPass:
        pass
    finally:
        handle.remove()


def _as_rows(hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states (batch × tokens × hidden) as float32 CPU rows, one per token."""
    return hidden.detach().reshape(-1, hidden.shape[-1]).to("cpu", torch.float32)


LOGITS_BYTES = 512 * 2**20
"""Memory for one batch's logits in :meth:`Prober.loss` (the model's dtype), which bounds its batch."""


PREFIX_BYTES = 512 * 2**20
"""Memory for the dense block outputs a :class:`DensePrefix` keeps (the model's dtype, where it computes)."""


class DensePrefix:
    """The dense model's outputs of its first blocks over one prober's loss batches, with the state
    of what they were computed with (:func:`~miprun.models.forwards.module_state`), so that a later
    :meth:`Prober.loss` over the same sequences replays the leading blocks that are still as they
    were — those before the first one a run removed or changed — instead of running them. Filled by
    a ``loss(keep=...)`` pass of the dense model, as many blocks as ``budget`` bytes hold."""

    def __init__(self, budget: int = PREFIX_BYTES) -> None:
        self.budget = budget
        self.outputs: list[list[torch.Tensor]] = []  # [block][batch]
        self.states: list[tuple] = []  # what precedes the blocks, then each kept block
        self.batch_size = 0

    def replayable(self, adapter: Any, before: int, batch_size: int) -> int:
        """How many leading blocks, below block ``before``, can be replayed: kept, and unchanged
        (with what precedes them) since they were kept; 0 for another batching."""
        if batch_size != self.batch_size or not self.states or self.states[0] != _outside_state(adapter):
            return 0
        count = 0
        while count < min(before, len(self.outputs), adapter.num_blocks) \
                and module_state(adapter.blocks[count]) == self.states[count + 1]:
            count += 1
        return count


def _outside_state(adapter: Any) -> tuple:
    """What every block's input also depends on: the backbone less its blocks (embeddings,
    position tables, norms), as :func:`~miprun.models.forwards.module_state` sees it."""
    return module_state(adapter.backbone, leaving_out=adapter.blocks)


class KnownOutputs:
    """The dense model's block outputs a run has computed, by forward batch (its token ids), within
    ``budget`` bytes: a later pass of the dense model over the same batch — the heal's — replays
    them instead of recomputing. Every :class:`Prober` made with the run's context adds the block
    outputs of its reference runs (the healing preview's, the race's chunks); the engine clears it
    once the heal is done. It holds references, not copies: outputs a prober also keeps cost
    nothing more while that prober lives."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self._batches: dict[bytes, list[torch.Tensor]] = {}

    def add(self, batch: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        """Keep ``outputs`` (every block's, batch × tokens × hidden) for token ids ``batch``, if
        they fit within the budget."""
        key = _ids_key(batch)
        size = sum(t.numel() * t.element_size() for t in outputs)
        if key not in self._batches and self.bytes + size <= self.budget:
            self._batches[key] = outputs
            self.bytes += size

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor] | None:
        """Every block's dense output for token ids ``batch``, or None when the run has not kept them."""
        return self._batches.get(_ids_key(batch))

    def clear(self) -> None:
        """Let go of every kept output."""
        self._batches.clear()
        self.bytes = 0


def _ids_key(batch: torch.Tensor) -> bytes:
    ids = batch.detach().to("cpu", torch.int64)
    return str(tuple(ids.shape)).encode() + ids.numpy().tobytes()


def summed_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The summed next-token negative log-likelihood of ``input_ids`` (batch × tokens) under
    ``logits`` (batch × tokens × vocabulary), float64: the cross-entropy of one sequence at a time
    in float32, so that only one sequence's logits are ever copied to float32 and normalised."""
    return sum(torch.nn.functional.cross_entropy(logits[row, :-1].float(), input_ids[row, 1:], reduction="sum").double()
               for row in range(input_ids.shape[0]))


class Prober:
    """Runs ``model`` over calibration ``input_ids`` (n × L) and counts forward passes.

    :param batch_size: sequences per batch (memory only; results do not depend on it beyond
        floating-point summation order).
    :param context: a :class:`~miprun.contracts.RunContext` whose ``forward_passes`` grows by this
        prober's share of the run's calibration sequences per call.
    """

    def __init__(self, model: Any, adapter: Any, input_ids: Any, *, batch_size: int = 4, context: Any = None) -> None:
        if input_ids is None or getattr(input_ids, "ndim", 0) != 2 or input_ids.shape[1] < 2:
            raise MiprunError("probing needs calibration input_ids of shape (samples, tokens ≥ 2)")
        if batch_size < 1:
            raise MiprunError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.adapter = adapter
        self.input_ids = input_ids
        self.batch_size = batch_size
        self.context = context
        self.passes = 0
        self._prefix: list[list[torch.Tensor]] | None = None  # [block][batch] dense block outputs
        self._batch_index = 0
        self._loader = layerwise_loader(model)  # None unless the model runs layer-wise
        self._sweep: BlockSweep | None = None
        self._spill: BoundarySpill | None = None
        self._dense_rows: torch.Tensor | None = None

    @classmethod
    def from_context(
        cls, context: Any, *, batch_size: int = 4, who: str = "this strategy", samples: int | None = None
    ) -> "Prober":
        """A prober over the run's model and calibration tokens (the first ``samples`` sequences
        when given); a clear error without a context."""
        if context is None or getattr(context, "model", None) is None:
            raise MiprunError(f"{who} runs the model and needs the run context (model, calibration tokens); "
                              f"use it through miprun.prune / miprun run / miprun compare")
        input_ids = context.input_ids if samples is None else context.input_ids[:samples]
        return cls(context.model, context.adapter, input_ids, batch_size=batch_size, context=context)

    @property
    def num_tokens(self) -> int:
        """Number of next-token predictions scored by :meth:`loss`: n × (L − 1)."""
        return int(self.input_ids.shape[0] * (self.input_ids.shape[1] - 1))

    def _count(self) -> None:
        """One more model call; the run's context counts it as the share of the calibration
        sequences it covered (a call over 1 of 16 sequences is 1/16 of a pass)."""
        self.passes += 1
        if self.context is not None:
            total = getattr(self.context.input_ids, "shape", (0,))[0] or self.input_ids.shape[0]
            self.context.forward_passes += self.input_ids.shape[0] / total

    def _batches(self, size: int | None = None) -> Iterator[torch.Tensor]:
        """The calibration sequences on the model's input device, ``size`` (the prober's
        ``batch_size`` when None) at a time."""
        device = input_device(self.model)
        size = size or self.batch_size
        for index, start in enumerate(range(0, self.input_ids.shape[0], size)):
            self._batch_index = index
            yield self.input_ids[start : start + size].to(device)

    def _loss_batch_size(self) -> int:
        """Sequences per batch for :meth:`loss`: the prober's ``batch_size``, fewer where one batch's
        logits would take more than :data:`LOGITS_BYTES` (a 262 144-token vocabulary in float32
        takes 1 GiB per 4 sequences of 256 tokens), at least one."""
        return logits_batch(self.model, int(self.input_ids.shape[1]), self.batch_size, LOGITS_BYTES)

    def loss(
        self,
        skip: Iterable[int] = (),
        overrides: dict[int, dict[str, torch.Tensor]] | None = None,
        *,
        backward: bool = False,
        keep: DensePrefix | None = None,
        replay: DensePrefix | None = None,
    ) -> float:
        """Mean next-token negative log-likelihood (nats) over the calibration tokens with ``skip``
        removed and ``overrides`` applied. One forward pass.

        :param backward: also back-propagate the mean loss, accumulating into ``param.grad``
            (the gradient of the loss over the *whole* calibration set, batch by batch).
        :param keep: an empty :class:`DensePrefix` this pass fills with its first blocks' outputs
            (within its budget): a later loss over the same sequences can replay them.
        :param replay: a filled :class:`DensePrefix` of these sequences: the blocks before the
            first skipped one that are as they were when it was kept return their kept output.
        """
        total = 0.0
        denominator = float(self.num_tokens)
        skip = list(skip)
        if self._loader is not None:
            return self._layerwise_loss(skip, overrides, backward) / denominator
        grad = torch.enable_grad() if backward else torch.no_grad()
        size = self._loss_batch_size()
        with skipping(self.adapter, skip), overriding(self.adapter, overrides or {}), grad, \
                self._keeping(keep, size), self._replaying(None if backward else replay, skip, size):
            for batch in self._batches(size):
                logits = self.model(input_ids=batch, use_cache=False).logits
                nll = summed_nll(logits, batch)
                if backward:
                    (nll / denominator).backward()
                total += float(nll.detach().double())
                del logits, nll
        self._count()
        return total / denominator

    @contextmanager
    def _keeping(self, keep: DensePrefix | None, batch_size: int) -> Iterator[None]:
        """Hooks filling ``keep`` with the outputs of as many leading blocks as its budget holds."""
        if keep is None:
            yield
            return
        per_block = self.input_ids.numel() * self.adapter.hidden_size * next(self.model.parameters()).element_size()
        count = min(self.adapter.num_blocks, keep.budget // max(per_block, 1))
        keep.batch_size, keep.outputs = batch_size, [[] for _ in range(count)]
        keep.states = [_outside_state(self.adapter)] + [module_state(self.adapter.blocks[i]) for i in range(count)]
        handles = [self.adapter.blocks[i].register_forward_hook(self._keeper(keep.outputs[i])) for i in range(count)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _replaying(self, replay: DensePrefix | None, skip: Iterable[int], batch_size: int) -> Iterator[None]:
        """The blocks of ``replay`` that may be replayed (:meth:`DensePrefix.replayable`) return
        their kept output for the current batch."""
        chosen = [int(b) for b in skip]
        before = min(chosen) if chosen else self.adapter.num_blocks
        count = replay.replayable(self.adapter, before, batch_size) if replay is not None else 0
        with patched_forwards(self.adapter, {index: self._replay(index, replay.outputs) for index in range(count)}):
            yield

    def perplexity(self, skip: Iterable[int] = (), overrides: dict[int, dict[str, torch.Tensor]] | None = None) -> float:
        """``exp`` of :meth:`loss` (calibration perplexity). One forward pass."""
        return math.exp(self.loss(skip, overrides))

    def final_states(
        self, skip: Iterable[int] = (), overrides: dict[int, dict[str, torch.Tensor]] | None = None
    ) -> torch.Tensor:
        """The output of the last block (the residual stream before the final norm) at every
        calibration token, float32 on the CPU, shape (n·L, hidden). One forward pass (no LM head)."""
        if self._loader is not None:
            self._refuse(overrides, False, "final_states with parameter overrides")
            stream = self._layerwise_streams([self._checked(skip)], reuse_prefix=False)[0]
            self._count()
            return torch.cat([_as_rows(hidden) for hidden in stream.states])
        captured: list[torch.Tensor] = []
        handle = self.adapter.blocks[self.adapter.num_blocks - 1].register_forward_hook(self._keeper(captured))
        try:
            with skipping(self.adapter, skip), overriding(self.adapter, overrides or {}), torch.no_grad():
                for batch in self._batches():
                    self.adapter.backbone(input_ids=batch, use_cache=False)
        finally:
            handle.remove()
        self._count()
        return torch.cat([_as_rows(hidden) for hidden in captured])

    def output_states(self, skip: Iterable[int] = (), *, reuse_prefix: bool = False,
                      run_from: int | None = None) -> torch.Tensor:
        """What the language-model head reads — the backbone's last hidden state, after the final
        norm where the architecture has one — at every calibration token with ``skip`` removed,
        float32 on the CPU, shape (n·L, hidden). One forward pass (no LM head).

        :param reuse_prefix: keep every block's output from the first call without ``skip`` and,
            in later calls, replay the blocks before the first removed one instead of running them:
            the same numbers for less compute, at the memory of one hidden state per block and
            calibration token (kept where the model computes).
        :param run_from: with ``reuse_prefix``, also run block ``run_from`` and every block after it
            (their forward hooks fire): for callers that change a block before the first removed one.
        """
        if self._loader is not None:
            if run_from is not None:
                raise MiprunError("output_states(run_from=...) needs the model in memory, not layer-wise")
            return self.output_states_many([skip], reuse_prefix=reuse_prefix)[0]
        chosen = sorted(set(int(b) for b in skip))
        replay = {}
        if reuse_prefix and self._prefix is not None and chosen:
            first = chosen[0] if run_from is None else max(0, min(chosen[0], run_from))
            replay = {index: self._replay(index) for index in range(first)}
        capture = reuse_prefix and self._prefix is None and not chosen
        outputs: list[list[torch.Tensor]] = [[] for _ in range(self.adapter.num_blocks)] if capture else []
        handles = [self.adapter.blocks[i].register_forward_hook(self._keeper(outputs[i])) for i in range(len(outputs))]
        captured: list[torch.Tensor] = []
        try:
            with skipping(self.adapter, chosen), patched_forwards(self.adapter, replay), torch.no_grad():
                for batch in self._batches():
                    hidden = self.adapter.backbone(input_ids=batch, use_cache=False).last_hidden_state
                    captured.append(_as_rows(hidden))
        finally:
            for handle in handles:
                handle.remove()
        if capture:
            self._prefix = outputs
            self._share(outputs)
        self._count()
        return torch.cat(captured)

    def _share(self, outputs: list[list[torch.Tensor]]) -> None:
        """Hand a reference run's block outputs ([block][batch]) to the run's
        :class:`KnownOutputs` (the context's ``dense``), batch by batch."""
        known = getattr(self.context, "dense", None)
        if known is None:
            return
        for index, start in enumerate(range(0, self.input_ids.shape[0], self.batch_size)):
            known.add(self.input_ids[start : start + self.batch_size], [block[index] for block in outputs])

    def run_until(self, last: int) -> None:
        """One pass of the dense model for the hooks the caller installed on block ``last``: the
        blocks before it replayed from the kept dense outputs (a ``reuse_prefix`` reference run of
        :meth:`output_states` must have been made), each batch abandoned once block ``last`` has
        run. Not counted as a forward pass: only block ``last`` computes."""
        if self._loader is not None or self._prefix is None:
            raise MiprunError("run_until needs the dense outputs of a reuse_prefix reference run, in memory")

        replay = {index: self._replay(index) for index in range(last)}
        with patched_forwards(self.adapter, replay), torch.no_grad():
            for batch in self._batches():
                forward_until(self.adapter.blocks[last], lambda batch=batch: self.adapter.backbone(input_ids=batch, use_cache=False))

    def release(self) -> None:
        """Free the dense outputs a ``reuse_prefix`` reference run kept in memory (a later reference
        run keeps them again)."""
        self._prefix = None

    def dense_outputs(self, index: int) -> list[torch.Tensor]:
        """Block ``index``'s dense output kept by a ``reuse_prefix`` reference run of
        :meth:`output_states`, one tensor per batch (batch × tokens × hidden)."""
        if self._prefix is None:
            raise MiprunError("dense_outputs needs a reuse_prefix reference run of output_states first")
        return self._prefix[index]

    def output_states_many(self, skips: Iterable[Iterable[int]], *, reuse_prefix: bool = False) -> list[torch.Tensor]:
        """:meth:`output_states` for several block sets: one forward pass each. A layer-wise model
        runs them in one sweep (each block read once for all of them); the dense output of a
        ``reuse_prefix`` prober is computed once and its block boundaries are kept on disk."""
        if self._loader is None:
            return [self.output_states(skip, reuse_prefix=reuse_prefix) for skip in skips]
        chosen = [self._checked(skip) for skip in skips]
        if reuse_prefix and self._spill is None:
            self._spill = BoundarySpill()
            dense = Stream(frozenset())
            self._block_sweep().run([dense], on_boundary=lambda index: self._spill.put(index, dense.states))
            self._dense_rows = self._head_rows(dense.states)
            self._count()
        wanted = list(dict.fromkeys(skip for skip in chosen if skip or self._dense_rows is None))
        streams = dict(zip(wanted, self._layerwise_streams(wanted, reuse_prefix=reuse_prefix)))
        rows = {skip: self._head_rows(stream.states) for skip, stream in streams.items()}
        for _ in streams:
            self._count()
        return [rows[skip] if skip in rows else self._dense_rows for skip in chosen]

    # ------------------------------------------------------------------ layer-wise execution

    def _checked(self, skip: Iterable[int]) -> frozenset[int]:
        return frozenset(checked_blocks(self.adapter, skip))

    def _block_sweep(self) -> BlockSweep:
        if self._sweep is None:
            self._sweep = BlockSweep(self.adapter, self._loader, self.input_ids, self.batch_size,
                                     input_device(self.model))
        return self._sweep

    def _layerwise_streams(self, skips: list[frozenset[int]], *, reuse_prefix: bool) -> list[Stream]:
        """The streams of ``skips`` run to the last block's output in one sweep; with a kept dense
        prefix, each starts at its first removed block."""
        streams = []
        for skip in skips:
            start = min(skip) if reuse_prefix and self._spill is not None and skip else 0
            source = (lambda start=start: self._spill.get(start)) if start else None
            streams.append(Stream(skip, start, source))
        if streams:
            self._block_sweep().run(streams)
        return streams

    def _head_rows(self, states: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_as_rows(hidden) for hidden in self._block_sweep().finish(states)])

    def _refuse(self, overrides: Any, backward: bool, what: str) -> None:
        if overrides or backward:
            raise MiprunError(f"{what} is not available in layer-wise execution (blocks are read from the "
                              f"checkpoint as they run); run this method in memory, without --layerwise/--max-memory")

    def _layerwise_loss(self, skip: Iterable[int], overrides: Any, backward: bool) -> float:
        """Summed next-token NLL with ``skip`` removed, one sweep; no overrides or gradients."""
        self._refuse(overrides, backward, "parameter overrides or gradients (LaCo, Taylor)")
        stream = self._layerwise_streams([self._checked(skip)], reuse_prefix=False)[0]
        total = 0.0
        for batch, logits in zip(self._block_sweep().batches, self._block_sweep().finish(stream.states, logits=True)):
            total += float(summed_nll(logits, batch))
        self._count()
        return total

    @staticmethod
    def _keeper(store: list[torch.Tensor]) -> Any:
        """A forward hook appending the block's output hidden states to ``store``."""

        def hook(module: Any, args: Any, out: Any) -> None:
            store.append((out[0] if isinstance(out, (tuple, list)) else out).detach())

        return hook

    def _replay(self, index: int, outputs: list[list[torch.Tensor]] | None = None) -> Any:
        """A forward factory for block ``index`` returning its kept dense output for the current
        batch (from ``outputs``, [block][batch]; the reference run's when None)."""

        def factory(block: Any, original: Any) -> Any:
            def forward(*args: Any, **kwargs: Any) -> Any:
                kept = self._prefix if outputs is None else outputs
                return in_block_format(block, original, args, kwargs, kept[index][self._batch_index])

            return forward

        return factory

    def boundary_states_at(self, position: int = -1) -> list[torch.Tensor]:
        """The residual stream at every block boundary at one token ``position`` of every sequence:
        T + 1 float32 CPU tensors of shape (n, hidden). One forward pass (no LM head)."""
        num_samples, seq_len = self.input_ids.shape
        keep = torch.full((num_samples, 1), position % seq_len, dtype=torch.long)
        states = capture_boundaries(self.adapter, self.input_ids, keep, batch_size=self.batch_size,
                                    device=input_device(self.model))
        self._count()
        return states


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the cosine similarity between matching rows of ``a`` and ``b``."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())
