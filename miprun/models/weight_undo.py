"""Putting back weights a strategy is about to change in place.

A healer folds its fits into weights the model keeps. Where the run finds the healed model worse
than plain removal (:mod:`miprun.heal_guard`), it asks the healer to undo them; the healer records,
just before each in-place change, what it overwrites in a :class:`WeightUndo`. The copies live on
the CPU, and only the tensors (or, for width pruning, the kept columns) that change are copied —
up to a budget (a quarter of the machine's memory by default): a healing that changes more (the
width refit of a model of tens of billions of parameters) keeps no copies, and cannot be undone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class WeightUndo:
    """The original values of weights about to be overwritten, restored by :meth:`restore` (last
    change first).

    :param max_bytes: most bytes of copies kept (None: a quarter of the machine's memory, 4 GiB
        where it is unknown); past it every copy is dropped and :meth:`restore` refuses.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        from miprun.memory import physical_bytes

        self._steps: list[Callable[[], None]] = []
        self.max_bytes = max_bytes if max_bytes is not None else (physical_bytes() or 16 << 30) // 4
        self.held = 0
        self.complete = True

    def keep(self, module: Any, *names: str, index: torch.Tensor | None = None, axis: int = 0) -> None:
        """Keep the tensors ``module.<name>`` as they are now (absent or None ones are skipped).

        With ``index``, only those entries along ``axis`` (the neurons a width surgeon keeps): the
        restore writes them back into that slice while the tensor is whole, or over the whole
        tensor once a surgeon has sliced it down to them (in the same order)."""
        for name in names:
            value = getattr(module, name, None)
            if value is None or not self.complete:
                continue
            size = value.element_size() * (value.numel() if index is None else value.numel() // value.shape[axis] * len(index))
            if self.held + size > self.max_bytes:
                self._steps.clear()
                self.complete = False
                continue
            data = value.detach()
            if index is not None:
                data = data.index_select(axis, index.to(data.device))
            self.held += size
            self._steps.append(_restorer(module, name, data.to("cpu", copy=True), index, axis))

    def point(self, owner: Any, name: str) -> None:
        """Keep the object ``owner.<name>`` refers to now (a tied head's weight, a config flag), so
        that :meth:`restore` points the attribute back to it."""
        value = getattr(owner, name)
        self._steps.append(lambda: setattr(owner, name, value))

    def restore(self) -> bool:
        """Put everything kept back, the last change first, and empty the record; False (nothing
        changed) when the copies outgrew ``max_bytes``."""
        if not self.complete:
            return False
        for step in reversed(self._steps):
            step()
        self._steps.clear()
        return True


def _restorer(module: Any, name: str, saved: torch.Tensor, index: torch.Tensor | None, axis: int) -> Callable[[], None]:
    """The step writing ``saved`` back into ``module.<name>`` (whatever tensor holds it then)."""

    def restore() -> None:
        current = getattr(module, name)
        value = saved.to(current.device, current.dtype)
        with torch.no_grad():
            if index is not None and current.shape != saved.shape:
                current.index_copy_(axis, index.to(current.device), value)
            else:
                current.copy_(value)

    return restore


class UndoableEdits:
    """For a strategy that edits weights in place (a healer): it keeps the record of its last
    edit in ``_undo`` (a :class:`WeightUndo`, or None where it cannot undo), and :meth:`undo`
    plays it back."""

    _undo: WeightUndo | None = None

    def undo(self) -> bool:
        """Put back every weight the last edit changed (before or after a surgeon removed what it
        selected: the modules edited stay); True when done, False when there is nothing to undo or
        the record could not be kept (its copies outgrew :attr:`WeightUndo.max_bytes`, or the
        model runs layer-wise, its edited blocks not held in memory)."""
        record, self._undo = self._undo, None
        return record.restore() if record is not None else False

