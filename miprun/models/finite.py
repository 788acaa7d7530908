"""Non-finite numbers, found where they first appear: in a block's weights or in its output.

A damaged checkpoint (NaN weights) or a float16 model that overflows would otherwise be scored,
pruned and saved without a word: cosine and MI scores compare NaNs like numbers. Both checks raise
a :class:`MiprunError` naming the block; for half-precision runs the message suggests a wider dtype.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from miprun.errors import MiprunError

HALF = (torch.float16, torch.bfloat16)


def _dtype_hint(dtype: torch.dtype) -> str:
    if dtype in HALF:
        return f"; the model runs in {str(dtype).removeprefix('torch.')}, which may overflow: retry with --dtype float32"
    return ""


def all_finite(tensor: torch.Tensor, rows: int = 4096) -> bool:
    """Whether every entry of ``tensor`` is finite, checked a slice of ``rows`` at a time (no
    tensor-sized temporary: an embedding matrix is checked without a copy of its size)."""
    tensor = tensor.detach()
    if tensor.dim() == 0:
        return bool(torch.isfinite(tensor))
    return all(bool(torch.isfinite(part).all()) for part in tensor.split(rows))


def finite_sum(tensor: torch.Tensor) -> bool:
    """Whether every entry of ``tensor`` is finite, from its float32 sum first: a NaN or ±inf entry
    makes the sum non-finite, so a finite sum proves them all finite at a fraction of an
    element-wise check's cost (no boolean temporary); only a non-finite sum — a bad entry, or finite
    entries whose sum overflows — is settled entry by entry."""
    if not tensor.is_floating_point():
        return True
    return bool(torch.isfinite(tensor.detach().sum(dtype=torch.float32))) or all_finite(tensor)


def check_weights(adapter: Any) -> None:
    """Raise when a parameter of a block, the embedding or the head holds NaN or ±inf (each
    tested by its float32 sum first, :func:`finite_sum`)."""
    for index, block in enumerate(adapter.blocks):
        for name, param in block.named_parameters():
            if not param.is_meta and not finite_sum(param):
                raise MiprunError(f"block {index} has non-finite weights (NaN or inf) in {name}: the checkpoint "
                                  f"is damaged; repair or re-download it before pruning")
    for name, param in adapter.model.named_parameters():
        if ".layers." in f".{name}" or param.is_meta:
            continue
        if not finite_sum(param):
            raise MiprunError(f"parameter {name} has non-finite weights (NaN or inf): the checkpoint is damaged")


@contextmanager
def finite_activations(adapter: Any) -> Iterator[None]:
    """Within the ``with`` block, a block whose output holds NaN or ±inf raises a one-line error
    naming it (the first such block of the forward pass)."""

    def guard(index: int) -> Any:
        def hook(module: Any, args: Any, out: Any) -> None:
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(hidden, torch.Tensor) and not finite_sum(hidden):
                raise MiprunError(f"block {index} produced non-finite hidden states (NaN or inf) on the calibration "
                                  f"tokens{_dtype_hint(hidden.dtype)}")

        return hook

    handles = [block.register_forward_hook(guard(i)) for i, block in enumerate(adapter.blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
