"""Selector ``given``: the blocks the user names (``-o selector.blocks=13-18,25``), so that a set
from a paper, another tool or an earlier run is removed, healed, checked and saved by the same
protocol as any selection."""

from __future__ import annotations

from typing import Any

from miprun.contracts import Selection, SpanScores
from miprun.errors import MiprunError
from miprun.selectors.refinement import check_prune_count


def parse_blocks(text: str) -> list[int]:
    """``"13-18,25"`` → ``[13, 14, 15, 16, 17, 18, 25]``: comma-separated 0-based indices and
    inclusive ranges; a one-line :class:`MiprunError` for anything else."""
    if not str(text).strip():
        raise MiprunError("selector given needs the blocks to remove, e.g. -o selector.blocks=13-18")
    blocks: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise MiprunError(f"selector given: cannot read block '{part}' in '{text}'; write 0-based indices and "
                              f"ranges, e.g. -o selector.blocks=13-18,25")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise MiprunError(f"selector given: the range '{part}' runs backwards; write it as {high}-{low}")
        blocks.extend(range(low, high + 1))
    if len(set(blocks)) != len(blocks):
        raise MiprunError(f"selector given: '{text}' names a block twice; name each block once")
    return sorted(blocks)


class GivenSelector:
    """Removes exactly the blocks of ``blocks`` (0-based, original numbering); reads no scores.

    :param blocks: comma-separated indices and inclusive ranges, e.g. ``"13-18,25"``.
    """

    name = "given"

    def __init__(self, blocks: str) -> None:
        self.blocks = parse_blocks(blocks)

    def select(self, scores: SpanScores, n: int, *, context: Any = None) -> Selection:
        """The named blocks, checked against the model and the run's count ``n``."""
        check_prune_count(scores.num_blocks, len(self.blocks))
        outside = [b for b in self.blocks if b >= scores.num_blocks]
        if outside:
            raise MiprunError(f"selector given: block(s) {outside} do not exist; this model has blocks 0–{scores.num_blocks - 1}")
        if n != len(self.blocks):
            raise MiprunError(f"selector given names {len(self.blocks)} block(s) but the run removes {n}; "
                              f"pass --prune {len(self.blocks)}")
        return Selection(blocks=list(self.blocks), evaluations=0, info={"given": list(self.blocks)})
