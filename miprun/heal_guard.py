"""Healing is kept where it helps: the quality check's held-out windows judge the healed model
against plain removal of the same selection.

Before healing, the run measures plain removal on the check's windows (the selection applied at
run time — blocks skipped, neurons masked —, one pass of the pruned model; the engine's ``judge``).
The check then measures the healed model on the same windows. Both figures go into the report
(``surgery.healing.held_out``) and the summary. Where the healer was the run's default and the
healed model is the worse of the two, the healer's ``undo`` puts back what it folded, the run
saves plain removal and says so in one line, and the check is taken again on what is saved: the
default never hands over a model that healing made worse on text neither selection nor healing
read. A healer the user named is kept either way (a comparison asked for it), with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def settle_healing(report: dict[str, Any], healer: Any, plain_loss: float, *, named: bool,
                   recheck: Callable[[], dict[str, Any]], note: Callable[[str], None]) -> None:
    """Compare the checked (healed) model with ``plain_loss`` and keep or undo the healing.

    :param report: the run's report, with ``quality`` (the check of the healed model) and
        ``surgery.healing`` (the healer's summary); both are updated in place.
    :param healer: the run's healer; its ``undo()`` (optional) restores the weights it changed and
        returns whether it could.
    :param plain_loss: plain removal's mean loss on the check's windows, measured before healing.
    :param named: the user named the healer (kept even when it lost).
    :param recheck: the quality check again, on the model as it is after an undo.
    :param note: where a one-line note goes (the run's reporter).
    """
    quality, healing = report["quality"], report["surgery"]["healing"]
    healed_ppl = quality["pruned_perplexity"]
    plain_ppl = math.exp(plain_loss) if plain_loss < 700 else math.inf
    held_out = {"plain_perplexity": plain_ppl, "healed_perplexity": healed_ppl,
                "windows": quality["windows"], "seq_len": quality["seq_len"]}
    worse = not healed_ppl <= plain_ppl  # a non-finite healed loss is worse
    comparison = f"held-out perplexity {_figure(healed_ppl)} healed vs {_figure(plain_ppl)} plain removal"
    undone = worse and not named and callable(getattr(healer, "undo", None)) and healer.undo()
    if not undone:
        healing["held_out"] = {**held_out, "kept": "healed"}
        if worse:
            fix = "compare with --heal none" if named else "rerun with --heal none"
            note(f"warning: healing made the result worse ({comparison}); {fix}")
        return
    line = f"not healed: healing made the result worse ({comparison}), so plain removal was saved"
    report["surgery"]["healing"] = {"skipped": line, "held_out": {**held_out, "kept": "plain removal"},
                                    "undone": healing}
    report["quality"] = recheck()
    note(line)


def held_out_line(healing: dict[str, Any]) -> str | None:
    """The summary's line for ``surgery.healing.held_out`` (None without one)."""
    record = healing.get("held_out")
    if not record:
        return None
    return (f"held-out perplexity {_figure(record['healed_perplexity'])} healed, {_figure(record['plain_perplexity'])} "
            f"plain removal: kept {record['kept']}")


def _figure(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "inf"
