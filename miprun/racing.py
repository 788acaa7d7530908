"""Racing: choose the best of a few candidates on as little data as the evidence allows.

Each candidate has one value per calibration sequence (its score on that sequence alone). The
sequences arrive in chunks; after each chunk, a candidate is dropped when the leader beats it by
more than sampling noise: a paired Student-t test on the per-sequence differences (two-sided,
``confidence`` 95 % by default). The race ends when one candidate is left or the sequences run out;
then the candidate with the highest mean wins — with every sequence seen, the same decision as
scoring each candidate on all of them. So the saving comes only from gaps that are clear early,
and a close race costs what the exhaustive comparison costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from scipy import stats


def clearly_worse(leader: Sequence[float], other: Sequence[float], confidence: float) -> bool:
    """Whether ``other`` is below ``leader`` beyond sampling noise (paired two-sided t-test on the
    per-sequence values; needs at least two pairs)."""
    differences = [a - b for a, b in zip(leader, other)]
    m = len(differences)
    if m < 2:
        return False
    mean = sum(differences) / m
    variance = sum((d - mean) ** 2 for d in differences) / (m - 1)
    if variance == 0.0:
        return mean > 0
    critical = stats.t.ppf(0.5 + confidence / 2, m - 1)
    return mean > critical * math.sqrt(variance / m)


def race(
    candidates: Sequence[Hashable],
    chunks: Iterable[Any],
    values_on: Callable[[Any, list[Hashable]], dict[Hashable, list[float]]],
    *,
    confidence: float = 0.95,
) -> tuple[Hashable, dict[str, Any]]:
    """The candidate with the highest per-sequence mean value, stopping early when it is clear.

    :param candidates: distinct candidates (in order of preference on ties).
    :param chunks: the data in the order it is spent (e.g. groups of calibration sequences).
    :param values_on: ``values_on(chunk, alive)`` → for each alive candidate, one value per sequence
        of the chunk (higher is better).
    :returns: the winner and a record: per candidate its mean, sequences seen and the chunk it was
        dropped after (None if never dropped); chunks used of those available.
    """
    alive = list(candidates)
    seen: dict[Hashable, list[float]] = {c: [] for c in alive}
    dropped: dict[Hashable, int] = {}
    used = 0
    for chunk in chunks:
        if len(alive) == 1:
            break
        used += 1
        for candidate, values in values_on(chunk, list(alive)).items():
            seen[candidate].extend(values)
        leader = max(alive, key=lambda c: (_mean(seen[c]), -candidates.index(c)))
        for candidate in list(alive):
            if candidate != leader and clearly_worse(seen[leader], seen[candidate], confidence):
                alive.remove(candidate)
                dropped[candidate] = used
    winner = max(alive, key=lambda c: (_mean(seen[c]), -candidates.index(c)))
    record = {
        "chunks_used": used,
        "candidates": [{"candidate": c, "mean": _mean(seen[c]), "sequences": len(seen[c]),
                        "dropped_after_chunk": dropped.get(c)} for c in candidates],
    }
    return winner, record


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else -math.inf
