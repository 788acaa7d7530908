"""bfloat16 multiplications for the statistics passes of a healing fit, where the CPU has them.

A healing fit reads the dense model's activations over many sequences (128 × 256 tokens by
default) and sums their products into Gram matrices; on a CPU both are matrix products of float32
values. CPUs with bfloat16 units (Intel AMX or AVX-512 BF16) multiply bfloat16 inputs and add in
float32 about three times as fast (oneDNN, ``torch.backends.mkldnn.matmul.fp32_precision =
"bf16"``): the inputs keep 8 significant bits, the sums keep float32's. Measured on SmolLM2-135M,
20 % of every FFN's neurons refitted on 128 × 256 WikiText-2 tokens (docs/neuron-pruning.md): the
fit took 40.4 s instead of 64.0 s, and WikiText-2 perplexity was 40.88 against 40.87 — the fit is a
least-squares estimate from a sample whose own noise is far larger than the rounding, and its ridge
(a fraction of the Gram's mean diagonal) bounds how far a relative error of about 1e-3 in the
products can move the solution. The same holds for a GPU running the model in bfloat16. The block
healer's default on the same model (6 of 30 blocks): its stage 25.1 → 17.2 s, WikiText-2 39.87 →
39.875 (docs/healing.md).

The width healer also runs its pass under bfloat16 autocast there (:func:`statistics_pass`:
1.4× faster again, WikiText-2 40.80 against 40.82).

Only statistics use it: never a selection's judgement of candidates, the quality check or an
evaluation, which stay in the model's precision. Off the CPU, without those units, for a model not
in float32, or for fits with little or no ridge (:data:`RIDGE_FLOOR`), nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from miprun.models.devices import input_device
from miprun.models.layerwise import layerwise_loader

PRODUCT_RULES = ("auto", "float32")
"""A healer's ``products`` option: bfloat16 inputs for its statistics under a ridge where the CPU has
bfloat16 units (``auto``), or the model's float32 multiplications (``float32``)."""

RIDGE_FLOOR = 1e-2
"""Smallest relative ridge (× the Gram's mean diagonal) of a fit whose products may be bfloat16: ten
times what their rounding moves a Gram entry by (at most 7e-4 of the mean diagonal, measured on a
1 024-row batch of SmolLM2's FFN activations), so that the ridge, not the rounding, bounds the
solution. ReplaceMe's map (ridge 1e-4) and exact fits stay in the model's precision."""


def reducible(*ridges: float) -> bool:
    """Whether a fit under these relative ridges may take bfloat16 products (:data:`RIDGE_FLOOR`)."""
    return all(ridge >= RIDGE_FLOOR for ridge in ridges)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX-512 BF16); where it does not,
    oneDNN would emulate bfloat16 and gain nothing."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


def statistics_products(device: torch.device | str, dtype: torch.dtype) -> str:
    """What :func:`bfloat16_products` would use for a model on ``device`` in ``dtype``: ``"bfloat16"``
    (float32 products on a CPU with bfloat16 units) or ``"model precision"``."""
    if torch.device(device).type == "cpu" and dtype == torch.float32 and native_bfloat16():
        matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
        if matmul is not None and hasattr(matmul, "fp32_precision"):
            return "bfloat16"
    return "model precision"


@contextmanager
def bfloat16_products(device: torch.device | str, dtype: torch.dtype, enabled: bool = True) -> Iterator[str]:
    """Within the block, float32 matrix products on the CPU take bfloat16 inputs and float32 sums
    where :func:`statistics_products` says so (and ``enabled``); yields what the products use, for
    the run's record. The previous setting is restored on leaving, also on an error."""
    use = statistics_products(device, dtype) if enabled else "model precision"
    if use != "bfloat16":
        yield use
        return
    matmul = torch.backends.mkldnn.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield use
    finally:
        matmul.fp32_precision = previous


@contextmanager
def fit_products(model: Any, products: str, *ridges: float) -> Iterator[str]:
    """:func:`bfloat16_products` for a healer's fits on ``model`` (in memory, or layer-wise in its
    loader's dtype) under these relative ridges: reduced only with ``products="auto"`` and every
    ridge :func:`reducible`. Yields what the products use."""
    loader = layerwise_loader(model)
    dtype = loader.dtype if loader is not None else next(model.parameters()).dtype
    with bfloat16_products(input_device(model), dtype, enabled=products == "auto" and reducible(*ridges)) as used:
        yield used


def products_label(used: str, exact: bool) -> str:
    """What a healer's fit multiplied in, for its summary: ``float64`` for an exact fit (no ridge),
    else bfloat16 inputs with float32 sums where :func:`fit_products` yielded ``"bfloat16"``, else
    float32."""
    if exact:
        return "float64"
    return "bfloat16 inputs, float32 sums" if used == "bfloat16" else "float32"


@contextmanager
def statistics_pass(used: str) -> Iterator[None]:
    """A healer's pass over its healing tokens, given what :func:`fit_products` yielded: with
    ``"bfloat16"``, the model's forward runs under CPU autocast to bfloat16 (its linear layers and
    attention take bfloat16 inputs and weights; the residual stream stays float32 by type
    promotion), about 1.6× as fast again as float32 products with bfloat16 inputs on SmolLM2-135M
    (16 × 256 tokens: 1.7–2.0 s against 3.1 s; final hidden states within 0.8 % of float32's, against
    0.7 % for those products). Statistics that hooks accumulate inside the pass must run their own
    products outside autocast (:func:`exact_hooks`). Otherwise nothing changes."""
    if used != "bfloat16":
        yield
        return
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def exact_hooks() -> Any:
    """A context that turns autocast off within a hook of a :func:`statistics_pass`, so that its
    products keep the precision :func:`bfloat16_products` gives them (bfloat16 inputs, float32 sums)."""
    return torch.autocast("cpu", enabled=False)
