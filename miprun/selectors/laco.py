"""Selector ``laco``: which layers to collapse, by LaCo's merge-and-check loop (Yang et al., 2024).

The paper's Algorithm 1, on layer indices of the current (already collapsed) model:

    l ← H − C
    while l ≥ L:
        merge the m = C − 1 layers after l into l (see :mod:`miprun.models.layer_collapse`)
        s ← mean cosine similarity between the last-layer outputs of the merged and the
            original model on the calibration tokens
        if s > T: accept the merge;  l ← min(l − I, |layers| − C)
        else:     l ← l − 1

Differences from the paper, because miprun selects exactly N blocks:

* the loop stops as soon as N blocks are removed, and the last merge takes only as many layers as
  are still needed;
* when a full sweep removes fewer than N (the threshold is too strict for this model), the rest are
  taken one at a time, each time folding in the block whose collapse keeps the similarity
  highest; these steps are marked ``forced`` in the trace and counted in ``Selection.info``.

The similarity is taken over every calibration token except the first of each sequence (the
attention-sink token). The candidate models are built with the ``laco`` surgeon's merge (original
parameters, nearest preceding kept block as base; :mod:`miprun.models.layer_collapse`), applied temporarily through
:mod:`miprun.probing`, so the selected set collapses exactly as it was scored. One forward pass per
candidate (no LM head).
"""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.errors import MiprunError
from miprun.selectors.refinement import check_prune_count


class LayerCollapseSelector:
    """LaCo's iterative merge-and-check loop, adapted to remove exactly ``n`` blocks.

    :param layers_per_merge: C, the layers combined by one merge (the base and C − 1 after it).
    :param interval: I, how far down the base moves after an accepted merge.
    :param threshold: T, the least mean cosine similarity of last-layer outputs to accept a merge.
    :param lowest: L, the lowest base layer considered.
    :param highest: H, one past the highest layer considered (default: the number of blocks).
    :param force: take the remaining blocks greedily when the sweep removes fewer than ``n``.
    :param batch_size: calibration sequences per forward batch.
    """

    name = "laco"

    def __init__(
        self,
        layers_per_merge: int = 4,
        interval: int = 2,
        threshold: float = 0.65,
        lowest: int = 1,
        highest: int | None = None,
        force: bool = True,
        batch_size: int = 4,
    ) -> None:
        if layers_per_merge < 2:
            raise MiprunError(f"layers_per_merge must be at least 2 (a base and one layer), got {layers_per_merge}")
        if interval < 1:
            raise MiprunError(f"interval must be at least 1, got {interval}")
        self.layers_per_merge = layers_per_merge
        self.interval = interval
        self.threshold = threshold
        self.lowest = lowest
        self.highest = highest
        self.force = force
        self.batch_size = batch_size

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """Return the ``n`` blocks to fold into earlier ones; ``info["merges"]`` maps base → blocks."""
        from miprun.models.layer_collapse import collapse_overrides, merge_plan
        from miprun.probing import Prober, mean_cosine

        num_blocks = scores.num_blocks
        check_prune_count(num_blocks, n)
        prober = Prober.from_context(context, batch_size=self.batch_size, who="selector 'laco'")
        seq_len = int(context.input_ids.shape[1])

        def without_first(states: Any) -> Any:
            rows = states.reshape(-1, seq_len, states.shape[-1])
            return rows[:, 1:].reshape(-1, states.shape[-1]) if seq_len > 1 else states

        reference = without_first(prober.final_states())

        def similarity(removed: list[int]) -> float:
            candidate = prober.final_states(removed, collapse_overrides(context.adapter, removed))
            return mean_cosine(without_first(candidate), reference)

        c = self.layers_per_merge
        kept = list(range(num_blocks))
        removed: list[int] = []
        trace: list[dict[str, Any]] = []
        high = num_blocks if self.highest is None else min(self.highest, num_blocks)
        layer = high - c
        while layer >= self.lowest and len(removed) < n:
            m = min(c - 1, len(kept) - layer - 1, n - len(removed))
            if m < 1:
                layer -= 1
                continue
            folded = kept[layer + 1 : layer + 1 + m]
            s = similarity(removed + folded)
            accepted = s > self.threshold
            trace.append({"base": kept[layer], "folded": folded, "similarity": s, "accepted": accepted})
            if accepted:
                removed += folded
                kept = [b for b in kept if b not in set(folded)]
                layer = min(layer - self.interval, len(kept) - c)
            else:
                layer -= 1
        forced = 0
        while len(removed) < n:
            if not self.force:
                raise MiprunError(
                    f"LaCo removed only {len(removed)} of {n} blocks at threshold {self.threshold}; lower "
                    f"--option selector.threshold or allow forced merges (selector.force=true)"
                )
            options = {b: similarity(removed + [b]) for b in kept}
            best = max(options, key=lambda b: (options[b], -b))
            trace.append({"base": None, "folded": [best], "similarity": options[best], "accepted": True,
                          "forced": True, "candidates": {str(b): v for b, v in options.items()}})
            removed.append(best)
            kept.remove(best)
            forced += 1
        final = sorted(removed)
        return Selection(
            blocks=final,
            evaluations=0,
            trace=trace,
            info={
                "merges": {str(base): blocks for base, blocks in sorted(merge_plan(num_blocks, final).items())},
                "threshold": self.threshold,
                "forced": forced,
                "similarity_checks": prober.passes - 1,
                "forward_passes": prober.passes,
            },
        )
