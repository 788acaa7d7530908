"""What differs between removing blocks (depth) and FFN neurons (width), in one place.

The engine (:mod:`miprun.engine`) runs any plan the same way; a :class:`Granularity` supplies the
rest: how many units ``--prune``/``--ratio`` mean, the scores handed to a selector that reads
none, the check of a selector's answer, the report fields and the default output name.

At neuron granularity ``n`` is the number of neurons removed from *every* FFN layer, so all layers
keep the same width and the saved config stays standard (``intermediate_size``, GPT-2
``n_inner``): stock ``transformers`` loads the checkpoint. Unequal per-layer counts are refused
(docs/neuron-pruning.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from miprun.contracts import NeuronScores, NeuronSelection, Selection, SpanScores
from miprun.errors import MiprunError


def model_slug(model: str) -> str:
    """The last path component of a model name, without ``.gguf``, safe as a directory name."""
    return Path(model.rstrip("/")).name.removesuffix(".gguf").replace("/", "-")


def check_count(n: int | None, ratio: float | None) -> None:
    """The checks of ``--prune`` / ``--ratio`` that need no model (made before it loads): not both,
    a ratio strictly between 0 and 1, a count of at least 1."""
    if n is not None and ratio is not None:
        raise MiprunError("give either --prune N or --ratio r, not both")
    if ratio is not None and not 0 < ratio < 1:
        raise MiprunError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    if n is not None and n < 1:
        raise MiprunError(f"--prune must be at least 1, got {n}")


def _count(total: int, n: int | None, ratio: float | None, unit: str, whole: str) -> int:
    """Units to remove from ``n`` or ``ratio`` (default 0.2) of ``total``, checked; ``whole`` says
    what ``total`` counts, for the error."""
    check_count(n, ratio)
    asked = f"--prune {n}"
    if n is None:
        n = max(1, round((0.2 if ratio is None else ratio) * total))
        asked = f"--ratio {0.2 if ratio is None else ratio} ({n} of {total})"
    if n >= total:
        fix = f"at most {total - 1}" if asked.startswith("--prune") else f"a --ratio below {(total - 0.5) / total:.4g}"
        raise MiprunError(f"{asked} would remove every {unit}: {whole}; choose {fix}")
    return n


def blocks_to_remove(total: int, n: int | None, ratio: float | None) -> int:
    """Number of blocks to remove from ``n`` or ``ratio`` (default ratio 0.2), checked against ``total``."""
    return _count(total, n, ratio, "block", f"the model has {total} blocks")


def neurons_to_remove(widths: list[int], n: int | None, ratio: float | None) -> int:
    """Neurons to remove from every FFN layer, from ``n`` or ``ratio`` (default 0.2) of the width."""
    if not widths:
        raise MiprunError("the model has no FFN layers to prune")
    if len(set(widths)) != 1:
        raise MiprunError(
            f"FFN widths differ between layers ({min(widths)}–{max(widths)}); neuron pruning needs one "
            f"intermediate size so the pruned checkpoint stays standard"
        )
    return _count(widths[0], n, ratio, "FFN neuron", f"layers have {widths[0]}")


class BlockGranularity:
    """Remove whole blocks."""

    name = "block"

    def size(self, adapter: Any) -> int:
        """What ``--prune`` counts against: the number of blocks."""
        return adapter.num_blocks

    def count(self, adapter: Any, n: int | None, ratio: float | None) -> int:
        """Blocks to remove."""
        return blocks_to_remove(adapter.num_blocks, n, ratio)

    def empty_scores(self, adapter: Any) -> SpanScores:
        """Scores for a selector that reads none: the block count only."""
        return SpanScores.empty(adapter.num_blocks)

    def check(self, selection: Selection, adapter: Any, count: int) -> None:
        """The selector returned ``count`` distinct blocks of the model."""
        blocks = list(selection.blocks)
        total = adapter.num_blocks
        if len(set(blocks)) != len(blocks) or any(not 0 <= int(b) < total for b in blocks) or len(blocks) != count:
            raise MiprunError(f"the selector returned blocks {blocks}; expected {count} distinct blocks in 0..{total - 1}")

    def report(self, scores: SpanScores, selection: Selection, *, count: int, total: int) -> dict[str, Any]:
        """The report fields of a block run."""
        scored = scores.metric != "none"
        ranking = scores if all(scores.is_computed(i) for i in range(total)) else scores.ranking
        scored = scored and all(ranking.is_computed(i) for i in range(total))  # never run a model after surgery
        return {
            "prune": {"requested": count, "of_blocks": total},
            "selected_blocks": sorted(int(b) for b in selection.blocks),
            "block_scores": {"metric": scores.metric, "redundant_when_high": scores.redundant_when_high,
                             "values": [ranking.value(i) for i in range(total)] if scored else [],
                             "importance": ranking.singles() if scored else [],
                             "from": "screen" if ranking is not scores else "scores", **scores.info},
            "span_table": scores.table(),
            "set_table": scores.set_table(),
            **({"screen": {"span_table": scores.screen.table(), "set_table": scores.screen.set_table()}}
               if scores.screen is not None else {}),
            "evaluations": {"spans": scores.evaluations, "mi": scores.evaluations if scores.metric == "mi" else 0,
                            "selector": selection.evaluations},
        }

    @staticmethod
    def heal_target(selection: Selection) -> list[int]:
        """What a block healer is handed: the removed blocks, sorted."""
        return sorted(int(b) for b in selection.blocks)

    @staticmethod
    def healed(selection: Selection) -> Selection:
        """The selection the surgeon carries out after healing: unchanged."""
        return selection

    def plain_loss(self, judge: Any, adapter: Any, selection: Selection) -> float:
        """``judge(skip)`` (a held-out loss) of the model as plain removal of ``selection`` would
        leave it: the blocks skipped, nothing edited."""
        return judge(self.heal_target(selection))

    def default_output(self, model: str, names: dict[str, str], count: int, adapter: Any) -> Path:
        """``pruned/<model>-<scorer>-<selector>-minus<N>`` (the selector alone when no scorer runs)."""
        method = "-".join(names[k] for k in ("scorer", "selector") if k in names)
        return Path("pruned") / f"{model_slug(model)}-{method}-minus{count}"


class NeuronGranularity:
    """Remove the same number of FFN neurons from every layer."""

    name = "neuron"

    def size(self, adapter: Any) -> int:
        """What ``--prune`` counts against: the FFN width (the first layer's)."""
        return self.widths(adapter)[0]

    @staticmethod
    def widths(adapter: Any) -> list[int]:
        """FFN width of every layer."""
        from miprun.models.adapters import ffn_widths

        return ffn_widths(adapter)

    def count(self, adapter: Any, n: int | None, ratio: float | None) -> int:
        """Neurons to remove from every FFN layer."""
        return neurons_to_remove(self.widths(adapter), n, ratio)

    def empty_scores(self, adapter: Any) -> NeuronScores:
        """Scores for a selector that reads none: layers and widths only."""
        return NeuronScores(list(range(adapter.num_blocks)), self.widths(adapter))

    def check(self, selection: NeuronSelection, adapter: Any, count: int) -> None:
        """Every layer keeps ``width − count`` distinct, in-range neurons."""
        for layer, width in enumerate(self.widths(adapter)):
            kept = selection.keep.get(layer)
            if kept is None:
                raise MiprunError(f"the selector returned no neurons for layer {layer}")
            if len(set(kept)) != len(kept) or any(not 0 <= k < width for k in kept):
                raise MiprunError(f"the selector returned invalid neuron indices for layer {layer}")
            if len(kept) != width - count:
                raise MiprunError(
                    f"the selector kept {len(kept)} neurons in layer {layer}, expected {width - count}; "
                    f"miprun saves standard checkpoints, which need the same FFN width in every layer"
                )

    def report(self, scores: NeuronScores, selection: NeuronSelection, *, count: int, total: int) -> dict[str, Any]:
        """The report fields of a neuron run (``total`` is the original FFN width)."""
        widths = dict(zip(scores.layers, scores.widths))
        return {
            "prune": {"neurons_per_layer": count, "of_width": total, "layers": len(scores.layers),
                      "ratio": round(count / total, 6)},
            "removed_neurons": {str(k): v for k, v in selection.removed(widths).items()},
            "neuron_scores": scores.summary(),
            "evaluations": {"selector": selection.evaluations},
        }

    @staticmethod
    def heal_target(selection: NeuronSelection) -> NeuronSelection:
        """What a neuron healer is handed: the whole selection (kept neurons per layer)."""
        return selection

    @staticmethod
    def healed(selection: NeuronSelection) -> NeuronSelection:
        """The selection the surgeon carries out after healing: without merge compensation, which
        the refit of the kept neurons replaces (it would otherwise be added on top)."""
        from dataclasses import replace

        if not selection.merges:
            return selection
        return replace(selection, merges=None, info={**selection.info, "merges_replaced_by_healing": True})

    @staticmethod
    def plain_loss(judge: Any, adapter: Any, selection: NeuronSelection) -> float:
        """``judge(())`` (a held-out loss) of the model as plain removal of ``selection`` would
        leave it: the removed neurons masked (merged where the selection merges), nothing edited."""
        from miprun.models.neuron_masks import masked_neurons

        with masked_neurons(adapter, selection.keep, selection.merges):
            return judge(())

    def default_output(self, model: str, names: dict[str, str], count: int, adapter: Any) -> Path:
        """``pruned/<model>-<estimator or selector>-<selector>-ffn<kept width>``."""
        method = names.get("estimator", names["selector"]).removeprefix("neuron-")
        selector = names["selector"]
        prefix = f"{method}-{selector}" if method != selector else selector
        return Path("pruned") / f"{model_slug(model)}-{prefix}-ffn{self.size(adapter) - count}"


GRANULARITY = {"block": BlockGranularity(), "neuron": NeuronGranularity()}
"""Granularity name → its specifics."""
