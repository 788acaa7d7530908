"""Scorer ``output-mi``: MI between the model's output with and without a block set.

Let Z be what the language-model head reads (the final hidden state, after the final norm) on the
calibration tokens, and Z₋S the same with the blocks S removed. The score of S is I(Z; Z₋S), from
the run's estimator (``gaussian-channel`` by default: the removal acts as additive noise
Z₋S − Z on the dense output). High MI means the pruned model still carries what the full model
hands its head, so S adds little: importance = −I(Z; Z₋S).

Why not only the block's own input and output (``block-mi``, the MI-PRUN paper)? A block's local
input/output statistics miss what later blocks do with its update, and blocks removed together
interact; on SmolLM2-135M the local MI ranks blocks with Spearman ρ ≈ 0.80 against the true
removal cost and this score with ρ ≈ 0.9 (docs/estimators.md). It is still a mutual information
between two random variables — the dense and the pruned output — not a loss or a label.

Cost: one forward pass over the calibration sequences used (``samples``) for the reference and one
per block or block set scored; every single block is scored eagerly (T passes). With
``reuse_prefix`` (default) the reference pass keeps every block's output and a pass for a set S
runs only the blocks from min(S) on — the same numbers for about half the compute of the singles,
at the memory of T hidden states per calibration token. Any set can be
scored (:attr:`SpanScores.supports_sets`), which Fast-Block-Select uses to account for blocks that
are removed together.
"""

from __future__ import annotations

from typing import Any

import torch

from miprun.errors import MiprunError
from miprun.estimators.preprocess import check_choice
from miprun.scores import SpanScores
from miprun.strategies import BoundaryStates


SPACES = ("hidden", "logits")


def logit_isometry(model: Any) -> torch.Tensor:
    """R (hidden × hidden, float64) with ‖R·z‖ = ‖W_c·z‖ for the centred output embedding W_c."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise MiprunError("output-mi with space=logits needs a model with a language-model head; "
                          "use space=hidden or load it with AutoModelForCausalLM")
    weight = head.weight.detach().to("cpu", torch.float64)
    return torch.linalg.qr(weight - weight.mean(0, keepdim=True), mode="r").R


class OutputMIScorer:
    """−I(Z; Z₋S) between the head's input with all blocks and with the blocks S removed.

    :param samples: calibration sequences used (the first ones); ``None`` uses all.
    :param batch_size: sequences per forward batch (memory only).
    :param reuse_prefix: replay the dense blocks before the first removed one (see the module
        docstring); off saves the memory and recomputes them.
    :param space: ``"hidden"`` compares the head's input as it is; ``"logits"`` first maps it
        isometrically onto the centred logits (z ↦ R·z with Q·R the QR factorisation of the
        output embedding minus its mean row, so ‖R·z‖ = ‖W_c·z‖): distances then count as much
        as they move the logits, at no vocabulary-sized cost.
    """

    name = "output-mi"
    needs_estimator = True

    def __init__(
        self, samples: int | None = None, batch_size: int = 4, reuse_prefix: bool = True, space: str = "hidden"
    ) -> None:
        check_choice("space", space, SPACES, self.name)
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise MiprunError(f"samples must be a whole number ≥ 1 (or unset for all), got {samples!r}")
        self.samples = samples
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.space = space
        self.options = {"samples": samples, "batch_size": batch_size, "reuse_prefix": reuse_prefix, "space": space}

    def score(self, states: BoundaryStates, estimator: Any | None, *, context: Any = None) -> SpanScores:
        """Scores with value = I(Z; Z₋S) in nats for spans and arbitrary block sets (every single
        block now)."""
        from miprun.probing import Prober

        if estimator is None:
            raise MiprunError("scorer 'output-mi' needs an estimator; pass --estimator (e.g. gaussian-channel)")
        prober = Prober.from_context(context, batch_size=self.batch_size, who="scorer 'output-mi'",
                                     samples=self.samples)
        to_space = logit_isometry(context.model) if self.space == "logits" else None

        def outputs(blocks: tuple[int, ...] = ()) -> Any:
            z = prober.output_states(skip=blocks, reuse_prefix=self.reuse_prefix)
            return estimator.prepare(z if to_space is None else z.double() @ to_space.T)

        reference = outputs()

        def compute_set(blocks: tuple[int, ...]) -> float:
            return estimator.mi_prepared(reference, outputs(blocks))

        scores = SpanScores(
            context.adapter.num_blocks,
            lambda first, length: compute_set(tuple(range(first, first + length))),
            metric="mi",
            redundant_when_high=True,
            compute_set=compute_set,
        )
        scores.singles()
        return scores
