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
from typing import Any, Iterable, Iterator

import torch

from miprun.collectors.hidden_states import capture_boundaries
from miprun.errors import MiprunError
from miprun.models.devices import input_device

_OUTPUT_ARITY: dict[type, int] = {}
"""Block class → 0 when its forward returns a tensor, else the length of the tuple it returns."""


def _hidden_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise MiprunError("cannot skip a block that is not called with its hidden states first")


def _in_block_format(block: Any, original: Any, args: tuple, kwargs: dict, hidden: torch.Tensor) -> Any:
    """``hidden`` in the output format of ``block`` (a tensor, or a tuple led by it)."""
    arity = _OUTPUT_ARITY.get(type(block))
    if arity is None:  # learn the output format once per block class
        out = original(*args, **kwargs)
        arity = len(out) if isinstance(out, (tuple, list)) else 0
        _OUTPUT_ARITY[type(block)] = arity
    return hidden if arity == 0 else (hidden,) + (None,) * (arity - 1)


def _passthrough(block: Any, original: Any) -> Any:
    """A forward that returns the block's input hidden states in the block's own output format."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return _in_block_format(block, original, args, kwargs, _hidden_argument(args, kwargs))

    return forward


@contextmanager
def _patched_forwards(adapter: Any, forwards: dict[int, Any]) -> Iterator[None]:
    """Within the ``with`` block, block ``i`` runs ``forwards[i](block, original_forward)``."""
    patched: list[tuple[Any, Any]] = []
    try:
        for index in sorted(forwards):
            block = adapter.blocks[index]
            previous = block.__dict__.get("forward")  # accelerate hooks set an instance attribute
            block.forward = forwards[index](block, block.forward)
            patched.append((block, previous))
        yield
    finally:
        for block, previous in patched:
            if previous is None:
                del block.forward
            else:
                block.forward = previous


@contextmanager
def skipping(adapter: Any, blocks: Iterable[int]) -> Iterator[None]:
    """Within the ``with`` block, blocks ``blocks`` (current indices) pass their input through.

    Equivalent to removing them; nothing about the model changes once the block exits.
    """
    chosen = sorted(set(int(b) for b in blocks))
    bad = [b for b in chosen if not 0 <= b < adapter.num_blocks]
    if bad:
        raise MiprunError(f"cannot skip blocks {bad}: the model has blocks 0..{adapter.num_blocks - 1}")
    with _patched_forwards(adapter, {index: _passthrough for index in chosen}):
        yield


@contextmanager
def overriding(adapter: Any, parameters: dict[int, dict[str, torch.Tensor]]) -> Iterator[None]:
    """Within the ``with`` block, block ``i`` uses ``parameters[i][name]`` in place of its own
    parameter ``name`` (as named by ``block.named_parameters()``); the originals come back after."""
    backups: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for index, tensors in parameters.items():
                named = dict(adapter.blocks[index].named_parameters())
                for name, value in tensors.items():
                    if name not in named:
                        raise MiprunError(f"block {index} has no parameter '{name}'")
                    param = named[name]
                    backups.append((param, param.detach().clone()))
                    param.copy_(value.to(param.device, param.dtype))
        yield
    finally:
        with torch.no_grad():
            for param, saved in reversed(backups):
                param.copy_(saved)


def _as_rows(hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states (batch × tokens × hidden) as float32 CPU rows, one per token."""
    return hidden.detach().reshape(-1, hidden.shape[-1]).to("cpu", torch.float32)


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

    def _batches(self) -> Iterator[torch.Tensor]:
        device = input_device(self.model)
        for index, start in enumerate(range(0, self.input_ids.shape[0], self.batch_size)):
            self._batch_index = index
            yield self.input_ids[start : start + self.batch_size].to(device)

    def loss(
        self,
        skip: Iterable[int] = (),
        overrides: dict[int, dict[str, torch.Tensor]] | None = None,
        *,
        backward: bool = False,
    ) -> float:
        """Mean next-token negative log-likelihood (nats) over the calibration tokens with ``skip``
        removed and ``overrides`` applied. One forward pass.

        :param backward: also back-propagate the mean loss, accumulating into ``param.grad``
            (the gradient of the loss over the *whole* calibration set, batch by batch).
        """
        total = 0.0
        denominator = float(self.num_tokens)
        grad = torch.enable_grad() if backward else torch.no_grad()
        with skipping(self.adapter, skip), overriding(self.adapter, overrides or {}), grad:
            for batch in self._batches():
                logits = self.model(input_ids=batch, use_cache=False).logits
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
                )
                if backward:
                    (nll / denominator).backward()
                total += float(nll.detach().double())
                del logits, nll
        self._count()
        return total / denominator

    def perplexity(self, skip: Iterable[int] = (), overrides: dict[int, dict[str, torch.Tensor]] | None = None) -> float:
        """``exp`` of :meth:`loss` (calibration perplexity). One forward pass."""
        return math.exp(self.loss(skip, overrides))

    def final_states(
        self, skip: Iterable[int] = (), overrides: dict[int, dict[str, torch.Tensor]] | None = None
    ) -> torch.Tensor:
        """The output of the last block (the residual stream before the final norm) at every
        calibration token, float32 on the CPU, shape (n·L, hidden). One forward pass (no LM head)."""
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

    def output_states(self, skip: Iterable[int] = (), *, reuse_prefix: bool = False) -> torch.Tensor:
        """What the language-model head reads — the backbone's last hidden state, after the final
        norm where the architecture has one — at every calibration token with ``skip`` removed,
        float32 on the CPU, shape (n·L, hidden). One forward pass (no LM head).

        :param reuse_prefix: keep every block's output from the first call without ``skip`` and,
            in later calls, replay the blocks before the first removed one instead of running them:
            the same numbers for less compute, at the memory of one hidden state per block and
            calibration token (kept where the model computes).
        """
        chosen = sorted(set(int(b) for b in skip))
        replay = {}
        if reuse_prefix and self._prefix is not None and chosen:
            replay = {index: self._replay(index) for index in range(chosen[0])}
        capture = reuse_prefix and self._prefix is None and not chosen
        outputs: list[list[torch.Tensor]] = [[] for _ in range(self.adapter.num_blocks)] if capture else []
        handles = [self.adapter.blocks[i].register_forward_hook(self._keeper(outputs[i])) for i in range(len(outputs))]
        captured: list[torch.Tensor] = []
        try:
            with skipping(self.adapter, chosen), _patched_forwards(self.adapter, replay), torch.no_grad():
                for batch in self._batches():
                    hidden = self.adapter.backbone(input_ids=batch, use_cache=False).last_hidden_state
                    captured.append(_as_rows(hidden))
        finally:
            for handle in handles:
                handle.remove()
        if capture:
            self._prefix = outputs
        self._count()
        return torch.cat(captured)

    @staticmethod
    def _keeper(store: list[torch.Tensor]) -> Any:
        """A forward hook appending the block's output hidden states to ``store``."""

        def hook(module: Any, args: Any, out: Any) -> None:
            store.append((out[0] if isinstance(out, (tuple, list)) else out).detach())

        return hook

    def _replay(self, index: int) -> Any:
        """A forward factory for block ``index`` returning its kept dense output for the current batch."""

        def factory(block: Any, original: Any) -> Any:
            def forward(*args: Any, **kwargs: Any) -> Any:
                return _in_block_format(block, original, args, kwargs, self._prefix[index][self._batch_index])

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
