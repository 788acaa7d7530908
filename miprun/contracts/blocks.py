"""Block (depth) data that flows between strategies: boundary states, span scores, a selection.

* :class:`BoundaryStates` — what a block collector returns: the residual stream at every block
  boundary for the same token positions.
* :class:`SpanScores` — what a block scorer returns: the importance of single blocks and
  contiguous spans (and, for scorers that run the pruned model, of any block set), evaluated
  lazily and counted. Its ``value`` is what the scorer measures (MI in nats for ``block-mi``,
  1 − cosine for ``block-influence``); ``importance`` turns it into one convention shared by all
  selectors: **lower importance = safer to remove**. Each distinct span is computed at most once;
  :attr:`SpanScores.evaluations` counts the distinct spans computed, which is the cost measure the
  MI-PRUN paper reports for Fast-Block-Select.
* :class:`Selection` — what a block selector returns: the blocks to remove.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from miprun.errors import MiprunError


@dataclass
class BoundaryStates:
    """The residual stream at every block boundary: ``states[i]`` is the input of block ``i`` and
    ``states[i + 1]`` its output, each a float32 CPU tensor of shape (tokens, hidden) holding the
    same token positions for every boundary."""

    states: list[Any]
    forward_passes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        """Number of blocks T (there are T + 1 boundaries)."""
        return len(self.states) - 1


@dataclass
class Selection:
    """What a block selector chose: 0-based block indices in original numbering, and how it got there."""

    blocks: list[int]
    evaluations: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def checked(self, num_blocks: int) -> list[int]:
        """The blocks, sorted, after checking they are distinct indices of a model with
        ``num_blocks`` blocks and leave at least one; otherwise a :class:`MiprunError`."""
        blocks = [int(b) for b in self.blocks]
        if len(set(blocks)) != len(blocks) or any(not 0 <= b < num_blocks for b in blocks):
            raise MiprunError(f"cannot remove blocks {blocks}: need distinct indices in 0..{num_blocks - 1}")
        if len(blocks) >= num_blocks:
            raise MiprunError(f"cannot remove all {num_blocks} blocks; choose fewer")
        return sorted(blocks)


class SpanScores:
    """Lazily computed importance of blocks ``[first, first + length)``.

    :param num_blocks: number of blocks T.
    :param compute: ``compute(first, length) -> value`` for a valid span.
    :param metric: name of the value (``"mi"``, ``"1-cos"``, …) used in reports.
    :param redundant_when_high: True when a high value means the span adds little (MI: the output
        still carries most of the input), so importance = −value; False when a high value means the
        span matters (1 − cosine), so importance = value.
    :param compute_set: ``compute_set(blocks) -> value`` for any set of blocks removed together,
        for scorers that measure a whole pruned model (``output-mi``); selectors that can use
        set values (``set-exchange``) check :attr:`supports_sets`. A contiguous set is the span of
        the same blocks and shares its cached value.
    :param screen: a cheaper estimate of the same values (the same scorer on a subsample of the
        calibration tokens), for scorers whose every value costs a model run. A selector may search
        on it (rank candidates, explore) but decides on these scores; selectors that do not know
        about it simply use these. Reports show per-block values from it when present.
    :param decide: ``decide(sets) -> (best, record)``: how the scorer picks the best of a few
        candidate sets (:meth:`choose`) when it can do better than scoring each in full —
        ``output-mi`` races them on the calibration sequences and stops when the gap is beyond
        sampling noise (:mod:`miprun.racing`). Without it, :meth:`choose` compares set values.
    :param info: what the scorer wants recorded about how it scored (e.g. the screen's size).
    :param compute_sets: ``compute_sets(sets) -> values``, the same values as ``compute_set`` for
        several sets in one call, for scorers that run them together more cheaply (a layer-wise
        model reads each block once for all of them); :meth:`prefetch` uses it.
    """

    def __init__(
        self,
        num_blocks: int,
        compute: Callable[[int, int], float],
        *,
        metric: str,
        redundant_when_high: bool,
        compute_set: Callable[[tuple[int, ...]], float] | None = None,
        screen: "SpanScores | None" = None,
        decide: Callable[[list[tuple[int, ...]]], tuple[tuple[int, ...], dict[str, Any]]] | None = None,
        info: dict[str, Any] | None = None,
        compute_sets: Callable[[list[tuple[int, ...]]], list[float]] | None = None,
    ) -> None:
        if num_blocks < 1:
            raise MiprunError(f"span scores need at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.metric = metric
        self.redundant_when_high = redundant_when_high
        self._compute = compute
        self._compute_set = compute_set
        self.screen = screen
        self._decide = decide
        self._compute_sets = compute_sets
        self.info = dict(info or {})
        self._values: dict[tuple[int, int], float] = {}
        self._set_values: dict[tuple[int, ...], float] = {}

    def value(self, first: int, length: int = 1) -> float:
        """The scorer's raw value of span ``[first, first + length)``, computed once."""
        key = (first, length)
        if key not in self._values:
            if length < 1 or first < 0 or first + length > self.num_blocks:
                raise MiprunError(
                    f"span [{first}, {first + length}) is outside the model's {self.num_blocks} blocks"
                )
            self._values[key] = float(self._compute(first, length))
        return self._values[key]

    def importance(self, first: int, length: int = 1) -> float:
        """Importance of the span: lower means safer to remove."""
        return self._as_importance(self.value(first, length))

    def _as_importance(self, value: float) -> float:
        return -value if self.redundant_when_high else value

    @property
    def supports_sets(self) -> bool:
        """Whether any set of blocks (not only contiguous spans) can be scored."""
        return self._compute_set is not None

    def set_value(self, blocks: Iterable[int]) -> float:
        """The value of removing ``blocks`` together, computed once; needs :attr:`supports_sets`."""
        key = tuple(sorted(set(int(b) for b in blocks)))
        if not key:
            raise MiprunError("a block set to score needs at least one block")
        if key == tuple(range(key[0], key[-1] + 1)):
            return self.value(key[0], len(key))
        if self._compute_set is None:
            raise MiprunError(f"scorer metric '{self.metric}' scores contiguous spans only, not the set {list(key)}")
        if key not in self._set_values:
            if key[0] < 0 or key[-1] >= self.num_blocks:
                raise MiprunError(f"block set {list(key)} is outside the model's {self.num_blocks} blocks")
            self._set_values[key] = float(self._compute_set(key))
        return self._set_values[key]

    def set_importance(self, blocks: Iterable[int]) -> float:
        """Importance of removing ``blocks`` together: lower means safer to remove."""
        return self._as_importance(self.set_value(blocks))

    def choose(self, sets: Iterable[Iterable[int]]) -> tuple[list[int], dict[str, Any]]:
        """The least important of ``sets`` (each a block set removed together) and how it was
        decided: by the scorer's own ``decide`` when it has one, else by :meth:`set_importance`."""
        keys = list(dict.fromkeys(tuple(sorted(set(int(b) for b in s))) for s in sets))
        if not keys:
            raise MiprunError("choose needs at least one candidate block set")
        if self._decide is not None:
            best, record = self._decide(keys)
            return list(best), record
        importance = {k: self.set_importance(k) for k in keys}
        best = min(keys, key=lambda k: (importance[k], k))
        return list(best), {"candidates": [{"candidate": list(k), "importance": importance[k]} for k in keys]}

    def prefetch(self, sets: Iterable[Iterable[int]]) -> None:
        """Compute the values of ``sets`` (block sets or spans) not known yet in one call of the
        scorer's ``compute_sets``; without one, nothing happens now and each value is computed
        when asked. Selectors call it before reading several values; the values do not change."""
        if self._compute_sets is None:
            return
        keys = []
        for blocks in sets:
            key = tuple(sorted(set(int(b) for b in blocks)))
            if not key or key[0] < 0 or key[-1] >= self.num_blocks:
                continue
            span = key == tuple(range(key[0], key[-1] + 1))
            known = (key[0], len(key)) in self._values if span else key in self._set_values
            if not known and key not in keys:
                keys.append(key)
        if not keys:
            return
        for key, value in zip(keys, self._compute_sets(keys)):
            if key == tuple(range(key[0], key[-1] + 1)):
                self._values[(key[0], len(key))] = float(value)
            else:
                self._set_values[key] = float(value)

    def singles(self) -> list[float]:
        """Importance of every single block, in block order."""
        self.prefetch((i,) for i in range(self.num_blocks))
        return [self.importance(i) for i in range(self.num_blocks)]

    def is_computed(self, first: int, length: int = 1) -> bool:
        """Whether span ``[first, first + length)`` was already evaluated."""
        return (first, length) in self._values

    @property
    def evaluations(self) -> int:
        """Number of distinct spans and block sets evaluated so far (single blocks included), the
        screen's included."""
        own = len(self._values) + len(self._set_values)
        return own + (self.screen.evaluations if self.screen is not None else 0)

    @property
    def ranking(self) -> "SpanScores":
        """The scores to rank single blocks by without extra cost: the screen when there is one."""
        return self.screen if self.screen is not None else self

    def table(self) -> list[dict[str, float | int]]:
        """Every evaluated span as ``{"first", "length", "value", "importance"}`` rows, sorted."""
        return [
            {"first": f, "length": n, "value": v, "importance": self._as_importance(v)}
            for (f, n), v in sorted(self._values.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]

    def set_table(self) -> list[dict[str, object]]:
        """Every evaluated non-contiguous block set as ``{"blocks", "value", "importance"}`` rows."""
        return [
            {"blocks": list(blocks), "value": v, "importance": self._as_importance(v)}
            for blocks, v in sorted(self._set_values.items(), key=lambda kv: (len(kv[0]), kv[0]))
        ]

    def best_sets(self, n: int) -> list[tuple[float, list[int]]]:
        """Every ``n``-block set evaluated so far (spans included), as ``(importance, blocks)``,
        lowest importance (safest to remove) first."""
        rows = [(r["importance"], list(range(r["first"], r["first"] + r["length"])))
                for r in self.table() if r["length"] == n]
        rows += [(r["importance"], r["blocks"]) for r in self.set_table() if len(r["blocks"]) == n]
        return sorted(rows)

    @classmethod
    def empty(cls, num_blocks: int) -> "SpanScores":
        """Scores that know only the block count: what a selector that reads no scores (SLEB,
        random, LaCo) is handed. Asking one for a value is an error naming the fix."""

        def compute(first: int, length: int) -> float:
            raise MiprunError("this run has no scorer (its selector declared it reads no scores); "
                              "name a scorer with --scorer")

        return cls(num_blocks, compute, metric="none", redundant_when_high=False)

    @classmethod
    def from_table(
        cls,
        values: dict[tuple[int, int], float],
        num_blocks: int,
        *,
        metric: str = "mi",
        redundant_when_high: bool = True,
        missing: float | None = None,
    ) -> "SpanScores":
        """Scores from a precomputed ``{(first, length): value}`` table (e.g. a paper's table).

        A span absent from the table takes ``missing``; without it, asking for one is an error.
        """

        def compute(first: int, length: int) -> float:
            if (first, length) in values:
                return values[(first, length)]
            if missing is None:
                raise MiprunError(
                    f"the score table has no value for span first={first} length={length}; "
                    f"pass a default for missing spans (--missing-mi)"
                )
            return missing

        return cls(num_blocks, compute, metric=metric, redundant_when_high=redundant_when_high)
