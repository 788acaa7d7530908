"""Selector ``sleb``: SLEB (Song et al., 2024, "SLEB: Streamlining LLMs through Redundancy
Verification and Elimination of Transformer Blocks").

SLEB removes blocks one at a time. At every step it tries removing each remaining block from the
current (already pruned) model, measures the calibration loss of the result, and removes the block
whose removal raises the loss least; then it re-scores everything on the new model. Minimising the
mean next-token loss is the same as minimising the calibration perplexity the paper uses
(perplexity = exp(loss)).

Cost: removing N of T blocks takes Σ_{i=0}^{N−1} (T − i) = N·T − N(N−1)/2 forward passes over the
calibration set — O(N·T), against one pass for the scorers that read collected hidden states. The
selector records that count in ``Selection.info`` and in the run's context.
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.selectors.refinement import check_prune_count


def sleb_forward_passes(num_blocks: int, n: int) -> int:
    """Forward passes SLEB needs to remove ``n`` of ``num_blocks`` blocks: Σ_{i<n} (T − i)."""
    return sum(num_blocks - i for i in range(n))


class SLEBSelector:
    """Iterative block elimination by calibration loss, re-scoring after every removal.

    Ignores the span scores it is given (only their block count is used); needs the run context.

    :param batch_size: calibration sequences per forward batch.
    """

    name = "sleb"

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size = batch_size

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Remove ``n`` blocks greedily by loss increase; the trace holds every candidate's loss."""
        from miprun.probing import Prober

        num_blocks = scores.num_blocks
        check_prune_count(num_blocks, n)
        prober = Prober.from_context(context, batch_size=self.batch_size, who="selector 'sleb'")
        dense_loss = prober.loss()
        removed: list[int] = []
        trace: list[dict[str, Any]] = []
        current = dense_loss
        for step in range(n):
            losses = {b: prober.loss(removed + [b]) for b in range(num_blocks) if b not in removed}
            chosen = min(losses, key=lambda b: (losses[b], b))
            trace.append({
                "step": step + 1,
                "losses": {str(b): v for b, v in losses.items()},
                "chosen": chosen,
                "loss": losses[chosen],
                "loss_increase": losses[chosen] - current,
            })
            removed.append(chosen)
            current = losses[chosen]
        return Selection(
            blocks=sorted(removed),
            evaluations=0,
            trace=trace,
            info={
                "removal_order": removed,
                "dense_loss": dense_loss,
                "final_loss": current,
                "forward_passes": prober.passes,
                "candidate_passes": sleb_forward_passes(num_blocks, n),
                "cost": f"O(N·T): {sleb_forward_passes(num_blocks, n)} candidate passes + 1 dense pass "
                        f"for N={n}, T={num_blocks}",
            },
        )
