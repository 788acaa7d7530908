"""Changing what a model's blocks do for the duration of a ``with`` block, without editing the model.

A block's ``forward`` is replaced by another callable and restored afterwards — to skip it (its
input passes through, which is exactly the model with that block removed), to replay kept outputs,
or to record the arguments it is called with. The replacement answers in the block's own output
format (a tensor, or a tuple led by the hidden states), learned once per block class.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch

from miprun.errors import MiprunError

OUTPUT_ARITY: dict[type, int] = {}
"""Block class → 0 when its forward returns a tensor, else the length of the tuple it returns."""


def hidden_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block was called with (first positional argument or ``hidden_states``)."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise MiprunError("cannot skip a block that is not called with its hidden states first")


def in_block_format(block: Any, original: Any, args: tuple, kwargs: dict, hidden: torch.Tensor) -> Any:
    """``hidden`` in the output format of ``block`` (a tensor, or a tuple led by it)."""
    arity = OUTPUT_ARITY.get(type(block))
    if arity is None:  # learn the output format once per block class
        out = original(*args, **kwargs)
        arity = len(out) if isinstance(out, (tuple, list)) else 0
        OUTPUT_ARITY[type(block)] = arity
    return hidden if arity == 0 else (hidden,) + (None,) * (arity - 1)


def passthrough(block: Any, original: Any) -> Any:
    """A forward that returns the block's input hidden states in the block's own output format."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return in_block_format(block, original, args, kwargs, hidden_argument(args, kwargs))

    return forward


@contextmanager
def patched_forwards(adapter: Any, forwards: dict[int, Any]) -> Iterator[None]:
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


def checked_blocks(adapter: Any, blocks: Iterable[int]) -> list[int]:
    """``blocks`` as sorted distinct indices of the model's blocks; a one-line error otherwise."""
    chosen = sorted(set(int(b) for b in blocks))
    bad = [b for b in chosen if not 0 <= b < adapter.num_blocks]
    if bad:
        raise MiprunError(f"cannot skip blocks {bad}: the model has blocks 0..{adapter.num_blocks - 1}")
    return chosen


@contextmanager
def skipping(adapter: Any, blocks: Iterable[int]) -> Iterator[None]:
    """Within the ``with`` block, blocks ``blocks`` (current indices) pass their input through.

    Equivalent to removing them; nothing about the model changes once the block exits.
    """
    with patched_forwards(adapter, {index: passthrough for index in checked_blocks(adapter, blocks)}):
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


def module_state(module: Any, *, leaving_out: Any = None) -> tuple:
    """What ``module`` computes with, by identity: for it and every submodule, its hooks and any
    patched ``forward``, and every parameter's and buffer's object, storage and version counter
    (which every in-place change bumps). Two equal states mean nothing about the module was
    changed or replaced in between, so an output it gave then is the output it gives now.
    ``leaving_out``: a submodule whose own state (and its submodules') is not part of it."""
    skipped = set() if leaving_out is None else {id(sub) for sub in leaving_out.modules()}
    items: list[Any] = []
    for sub in module.modules():
        if id(sub) in skipped:
            continue
        items.append((id(sub), tuple(sub._forward_pre_hooks), tuple(sub._forward_hooks), id(sub.__dict__.get("forward"))))
        for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
            items.append((id(tensor), tensor.data_ptr(), tensor._version))
    return tuple(items)
