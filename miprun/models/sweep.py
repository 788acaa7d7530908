"""Block-major execution of a layer-wise model: each block read once for every batch and stream.

A :class:`BlockSweep` first *records* how the model calls its blocks on each calibration batch —
the input of block 0 and the extra arguments of every block (attention masks, rotary embeddings,
per-layer sliding windows): one pass of the backbone in which every block's ``forward`` is replaced
by a recorder, so no block weight is read. It then runs *streams* — residual streams of the
calibration batches, each with its own set of skipped blocks and its own starting boundary —
block by block: block ``i`` is loaded once, every stream that runs it advances through it on every
batch, and the block is dropped. The model's own code applies what follows the blocks (the final
norm, the head) with the last block's output replayed. The numbers equal the in-memory model's:
the same modules are called with the same arguments on the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from miprun.models.forwards import OUTPUT_ARITY, hidden_argument, in_block_format, passthrough, patched_forwards


class _Recorded(Exception):
    """Raised by the last block's recorder: the rest of the recording pass is not needed."""


def _hidden(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


@dataclass
class Stream:
    """A residual stream of every calibration batch from boundary ``start`` on, skipping ``skip``.

    :ivar states: the stream per batch at the boundary reached so far; None until ``start``,
        when ``source()`` provides it (the recorded inputs, or a kept dense boundary).
    """

    skip: frozenset[int]
    start: int = 0
    source: Callable[[], list[torch.Tensor]] | None = None
    states: list[torch.Tensor] | None = None


@dataclass
class BlockSweep:
    """Block-major runs of ``adapter``'s model over ``input_ids`` (n × L) in batches, loading
    blocks through ``loader`` (:class:`~miprun.models.layerwise.BlockLoader`)."""

    adapter: Any
    loader: Any
    input_ids: torch.Tensor
    batch_size: int
    device: torch.device
    inputs: list[torch.Tensor] = field(default_factory=list)
    calls: list[list[tuple[tuple, dict]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.batches = [self.input_ids[s : s + self.batch_size].to(self.device)
                        for s in range(0, self.input_ids.shape[0], self.batch_size)]
        self.calls = [[] for _ in range(self.adapter.num_blocks)]
        self._record()

    def _record(self) -> None:
        """Fill :attr:`inputs` (block 0's input per batch) and :attr:`calls` (per block and batch,
        the arguments besides the hidden states) without reading any block weight."""
        last = self.adapter.num_blocks - 1

        def recorder(index: int) -> Any:
            def factory(block: Any, original: Any) -> Any:
                def forward(*args: Any, **kwargs: Any) -> Any:
                    hidden = hidden_argument(args, kwargs)
                    rest = args[1:] if args else ()
                    self.calls[index].append((rest, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
                    if index == 0:
                        self.inputs.append(hidden)
                    if index == last:
                        raise _Recorded
                    if type(block) not in OUTPUT_ARITY:  # learning the output format runs the block once
                        with self.loader.pinned(index):
                            return in_block_format(block, original, args, kwargs, hidden)
                    return in_block_format(block, original, args, kwargs, hidden)

                return forward

            return factory

        patches = {index: recorder(index) for index in range(self.adapter.num_blocks)}
        with self.loader.suspended(), patched_forwards(self.adapter, patches), torch.no_grad():
            for batch in self.batches:
                try:
                    self.adapter.backbone(input_ids=batch, use_cache=False)
                except _Recorded:
                    pass

    def run(self, streams: list[Stream], *, on_boundary: Callable[[int], None] | None = None,
            until: int | None = None) -> None:
        """Advance every stream to the output of the last block (to boundary ``until``: the input
        of block ``until``), reading each block once.

        :param on_boundary: called with ``i + 1`` after block ``i`` has run (and with the first
            start boundary before any block runs), when the streams hold that boundary's states.
        """
        first = min(stream.start for stream in streams)
        for index in range(first, self.adapter.num_blocks if until is None else until):
            for stream in streams:
                if stream.start == index and stream.states is None:
                    stream.states = stream.source() if stream.source is not None else list(self.inputs)
            if index == first and on_boundary is not None:
                on_boundary(first)
            active = [s for s in streams if s.start <= index and index not in s.skip]
            if active:
                with self.loader.pinned(index) as block, torch.no_grad():
                    for stream in active:
                        stream.states = [self._call(block, index, b, h) for b, h in enumerate(stream.states)]
            if on_boundary is not None:
                on_boundary(index + 1)

    def _call(self, block: Any, index: int, batch: int, hidden: torch.Tensor) -> torch.Tensor:
        rest, kwargs = self.calls[index][batch]
        return _hidden(block(hidden, *rest, **kwargs))

    def finish(self, states: list[torch.Tensor], *, logits: bool = False) -> Any:
        """Per batch, what the model makes of ``states`` (the last block's outputs): the
        backbone's last hidden state (after the final norm), or the head's logits; a generator,
        so one batch's logits are held at a time."""
        last = self.adapter.num_blocks - 1
        for batch, final in zip(self.batches, states):
            def replay(block: Any, original: Any, final: torch.Tensor = final) -> Any:
                return lambda *args, **kwargs: in_block_format(block, original, args, kwargs, final)

            patches = {index: passthrough for index in range(last)}
            patches[last] = replay
            with self.loader.suspended(), patched_forwards(self.adapter, patches), torch.no_grad():
                if logits:
                    yield self.adapter.model(input_ids=batch, use_cache=False).logits
                else:
                    yield self.adapter.backbone(input_ids=batch, use_cache=False).last_hidden_state


class BoundarySpill:
    """Stream states per block boundary kept on disk (a temporary directory, removed with this
    object), for runs that replay a dense prefix without holding it in memory."""

    def __init__(self) -> None:
        import tempfile

        self._directory = tempfile.TemporaryDirectory(prefix="miprun-spill-")
        self._devices: dict[int, torch.device] = {}

    def put(self, index: int, states: list[torch.Tensor]) -> None:
        """Keep the states of boundary ``index`` (one tensor per batch)."""
        from pathlib import Path

        self._devices[index] = states[0].device
        torch.save([s.detach().cpu() for s in states], Path(self._directory.name) / f"{index}.pt")

    def get(self, index: int) -> list[torch.Tensor]:
        """The states kept for boundary ``index``, back on their device."""
        from pathlib import Path

        kept = torch.load(Path(self._directory.name) / f"{index}.pt")
        return [s.to(self._devices[index]) for s in kept]


def sweep_logits(loader: Any, batches: list[torch.Tensor], *, stream_bytes: int = 512 * 2**20) -> Any:
    """The logits of a layer-wise model on each of ``batches`` (input ids; consecutive batches of
    the same shape are run together), block-major: every block is read once per group of batches
    whose residual streams take at most ``stream_bytes``. A generator, one batch's logits at a time."""
    adapter = loader.adapter
    index = 0
    while index < len(batches):
        shape = batches[index].shape
        hidden = adapter.model.get_input_embeddings().weight.shape[-1]
        per_batch = shape[0] * shape[1] * hidden * torch.empty((), dtype=loader.dtype).element_size()
        group = [batches[index]]
        while (index + len(group) < len(batches) and batches[index + len(group)].shape == shape
               and (len(group) + 1) * per_batch <= stream_bytes):
            group.append(batches[index + len(group)])
        sweep = BlockSweep(adapter, loader, torch.cat(group), int(shape[0]), group[0].device)
        stream = Stream(frozenset())
        sweep.run([stream])
        yield from sweep.finish(stream.states, logits=True)
        index += len(group)
