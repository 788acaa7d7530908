"""The closed-form pieces every linear healing fit shares: cuts, the rows a fit reads, the target
it is fitted to (through an output norm where one follows) and the factorised ridge system.

Used by the healer (:mod:`miprun.healing`) and its preview for selection
(:mod:`miprun.healing_preview`), which must fit exactly as the healer does.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.models.devices import input_embedding, output_head
from miprun.models.forwards import hidden_argument


def cuts_of(blocks: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of the sorted removed ``blocks``."""
    runs: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


def module_output(value: Any) -> torch.Tensor:
    """The hidden states a block or module returned (the first item of a tuple output)."""
    return value[0] if isinstance(value, (tuple, list)) else value


SINK_RULES = ("average", "skip")
"""How a fit treats each sequence's first token, the attention sink (:func:`sink_weights`): as one
token of the other tokens' mean target energy, or not at all."""


def fit_rows(hidden: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Every token of every sequence (sequence-major), as rows of ``dtype`` (float64 by default);
    each sequence's first row is the attention sink, weighted by :func:`sink_weights`."""
    return hidden.reshape(-1, hidden.shape[-1]).to(dtype)


def first_rows(count: int, sequences: int, device: Any = None) -> torch.Tensor:
    """Indices of each sequence's first row among ``count`` sequence-major rows of ``sequences``
    sequences of equal length."""
    return torch.arange(sequences, device=device) * (count // max(sequences, 1))


def sink_weights(energy: torch.Tensor, sequences: int, rule: str) -> torch.Tensor:
    """Least-squares weights of one batch's first rows (float64, one per sequence; every other row
    weighs 1), from ``energy``, each sequence-major row's target ‖y‖².

    The first token of every sequence is the attention sink: its activations are orders of
    magnitude larger than other tokens' in a few channels, and every later token reads its output
    through attention. Taken as it is, it dominates a fit; left out (``"skip"``: weight 0), a fit is
    free to change what the sink's massive channels send, which nothing in the fit's data then
    measures — a refit on few sequences can then hand the sink a different output and every later
    token a different attention (docs/healing.md: healed worse than plain removal). ``"average"``
    weighs it so that its target carries the batch's mean energy per other token: one ordinary
    token of the fit, which must keep it, but cannot be dominated by it. A sequence of one token
    (no other token to average) or a first row with no target energy weighs 0."""
    first = first_rows(energy.shape[0], sequences, energy.device)
    weights = torch.zeros(sequences, dtype=torch.float64, device=energy.device)
    others = energy.shape[0] - sequences
    if rule == "skip" or others < 1:
        return weights
    own = energy[first].double()
    mean = (energy.double().sum() - own.sum()) / others
    return torch.where(own > 0, (mean / own.clamp_min(1e-300)).sqrt(), weights)


def reweighted(rows: torch.Tensor, first: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A copy of ``rows`` with the rows at ``first`` multiplied by ``weights`` (the caller's
    ``rows`` are left as they are)."""
    return rows.index_copy(0, first, rows[first] * weights[:, None].to(rows.dtype))


def gram_matrix(rows: torch.Tensor) -> torch.Tensor:
    """``rowsᵀ·rows`` as float64, from the upper block triangle of :class:`RunningProducts`
    (measured about 25 % faster on CPU than one full product for 1 020 × 1 229 float32 rows),
    exactly symmetric."""
    products = RunningProducts()
    products.add(rows)
    return products.gram


class RunningProducts:
    """XᵀX and XᵀY of a fit's rows, summed batch by batch into running sums of the rows' dtype.

    Each batch is added by the matrix products themselves (``addmm_``: no per-batch product
    matrix, no separate addition, no copy), XᵀX as its upper block triangle — the two column
    halves' ``X₁ᵀ[X₁ X₂]`` and ``X₂ᵀX₂``, three quarters of a full product's work — mirrored once
    when read (:attr:`gram`), exactly symmetric. Rows of float64 (exact fits) give float64 sums.
    Rows of float32 (fits under a ridge) give float32 sums: over B batches their rounding is at
    most about B·2⁻²⁴ of an entry's magnitude (2·10⁻⁶ for the width heal's 32 batches), far below
    the products' own (bfloat16 inputs round each to 2⁻⁹) and the ridge floor that bounds what
    either can move the solution (:data:`~miprun.models.matmul_precision.RIDGE_FLOOR`). Summing
    each batch's float32 product into float64 instead (earlier versions) took 20 % longer in the
    width heal and twice the memory. Read as float64 (:attr:`gram`, :attr:`cross`)."""

    def __init__(self) -> None:
        self._gram: torch.Tensor | None = None
        self._cross: torch.Tensor | None = None
        self._read: dict[str, torch.Tensor] = {}  # the float64 forms, until the next batch

    def add(self, rows: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Add one batch: ``rows`` (tokens × inputs) and ``targets`` (tokens × outputs, converted
        to the rows' dtype; None: XᵀX alone)."""
        n = rows.shape[-1]
        self._read.clear()
        if self._gram is None:
            self._gram = rows.new_zeros(n, n)
            self._cross = None if targets is None else rows.new_zeros(n, targets.shape[-1])
        half = n // 2
        if half < 64:
            self._gram.addmm_(rows.T, rows)
        else:
            for start, stop in ((0, half), (half, n)):
                self._gram[start:stop, start:].addmm_(rows[:, start:stop].T, rows[:, start:])
        if targets is not None:
            self._cross.addmm_(rows.T, targets.to(rows.dtype))

    @property
    def gram(self) -> torch.Tensor | None:
        """XᵀX so far, float64, symmetric (None before the first batch)."""
        if self._gram is None:
            return None
        if "gram" not in self._read:
            upper = self._gram.to(torch.float64)
            self._read["gram"] = torch.triu(upper) + torch.triu(upper, 1).T
        return self._read["gram"]

    @property
    def cross(self) -> torch.Tensor | None:
        """XᵀY so far, float64 (None before the first batch)."""
        if self._cross is None:
            return None
        if "cross" not in self._read:
            self._read["cross"] = self._cross.to(torch.float64)
        return self._read["cross"]


def embedding_rows(args: tuple, kwargs: dict) -> dict[str, Any]:
    """What a cut at block 0 reads, from block 0's forward-pre-hook arguments: its map acts on the
    embedding output (block 0's input), so ``x``, ``z`` and ``added`` are all that input's rows
    (float64); no output norm (``gain``) and no rest of the stream."""
    hidden = hidden_argument(args, kwargs)
    rows = fit_rows(hidden)
    return {"x": rows, "z": rows, "added": rows, "gain": None, "rest": None, "sequences": hidden.shape[0]}


def with_ones(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with a column of ones appended: the input a fitted bias row multiplies."""
    return torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], -1)


def wanted_update(rows: dict[str, Any], target: torch.Tensor) -> torch.Tensor:
    """What the FFN output module before a cut should give so that the stream after it is the
    dense ``target``: ``target − rest``, divided by the block's residual scale (Granite's), through
    the output norm where one follows (:func:`through_norm`). ``rows`` as
    :meth:`miprun.healing.LinearHealer._captures` gives them."""
    y = target.to(rows["x"].device) - (rows["rest"] if rows["rest"] is not None else 0.0)
    if rows.get("scale", 1.0) != 1.0:
        y = y / rows["scale"]
    if rows["gain"] is not None:
        y = through_norm(y, rows["z"], rows["gain"].to(y.device, y.dtype))
    return y


def ridge_solver(gram: torch.Tensor, relative: float, scale: float | None = None) -> Any:
    """``solve(cross, prior, extra=None)`` for the ridge system (G + UᵀU + λI)·W = XᵀY + λ·W₀,
    λ = ``relative`` × ``scale`` (by default the mean diagonal of the Gram G): G + λI factorised
    once (Cholesky; LU where it is not positive definite), so that many right-hand sides over the
    same inputs cost a solve each. ``extra`` (U, a few rows, float64) adds rows to the system
    without refactorising it (Woodbury's identity: a k × k solve for k rows); ``cross`` must then
    include their ``UᵀY`` share."""
    ridge = relative * (float(gram.diagonal().mean()) if scale is None else scale)
    matrix = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(matrix)
    matrix = None if int(info) == 0 else matrix  # kept only for the LU fallback

    def inverse_times(rhs: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(rhs, factor) if matrix is None else torch.linalg.solve(matrix, rhs)

    def solve(cross: torch.Tensor, prior: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        solution = inverse_times(cross + ridge * prior)
        if extra is None or extra.shape[0] == 0:
            return solution
        extra = extra.to(solution)
        spread = inverse_times(extra.T)  # (G + λI)⁻¹Uᵀ
        inner = torch.eye(extra.shape[0], dtype=solution.dtype, device=solution.device) + extra @ spread
        return solution - spread @ torch.linalg.solve(inner, extra @ solution)

    return solve


def fit_error(energy: float, gram: torch.Tensor, cross: torch.Tensor, weights: torch.Tensor) -> float:
    """‖X·W − Y‖² from the normal equations alone: ‖Y‖² − 2·⟨W, XᵀY⟩ + ⟨W, XᵀX·W⟩ (``energy`` is
    ‖Y‖²), clamped at 0 against rounding."""
    return max(energy - 2 * float((weights * cross).sum()) + float((weights * (gram @ weights)).sum()), 0.0)


def through_norm(y: torch.Tensor, z: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The pre-norm target for a wanted post-norm output ``y``: ``y / g`` (``g`` the norm's
    per-channel gain), rescaled per token to the length ``z`` (the pre-norm output as it is) has,
    so the ridge keeps its meaning. A norm of the RMS kind maps it to ``y``'s direction; channels
    with no gain get no target."""
    safe = torch.where(gain.abs() > 1e-12, gain, torch.ones_like(gain))
    direction = torch.where(gain.abs() > 1e-12, y / safe, torch.zeros_like(y))
    length = direction.norm(dim=-1, keepdim=True)
    scale = torch.where(length > 0, z.norm(dim=-1, keepdim=True) / length.clamp_min(1e-300), torch.zeros_like(length))
    return direction * scale


def embedding_refusal(model: Any, *, untie_head: bool) -> str | None:
    """Why a cut at block 0 gets no map on the token embedding, or None when it can have one.

    A map acts on the embedding output, so the embedding must produce the stream directly (OPT's
    projected embedding does not). And where the output head shares the embedding's weights, mapping
    the embedding would untie the head and add the embedding's parameters back to a model pruning
    was meant to shrink (SmolLM2-135M: 28 M, more than six of its blocks) — refused unless
    ``untie_head``. The blocks after the cut are still refitted either way."""
    embedding = input_embedding(model)
    width = getattr(model.config, "hidden_size", None)
    if embedding is None or (width is not None and embedding.weight.shape[-1] != width):
        return "the token embedding does not produce the stream directly (it is projected first), so no map can be folded into it"
    head = output_head(model)
    if not untie_head and head is not None and head.weight is embedding.weight:
        return (f"the output head shares the token embedding: a map on it would untie the head and add "
                f"{embedding.weight.numel():,} parameters (-o healer.untie_head=true allows it)")
    return None
