"""AURAC: the area under the rank-accuracy curve, normalised by the span of the rank axis."""

from __future__ import annotations

import math
from collections.abc import Sequence

AXES = ("log2", "linear")


def rank_axis(ranks: Sequence[int], axis: str) -> list[float]:
    """Each rank's x on the axis (log2(rank) or rank), in the order given; errors name what is
    wrong with the ranks."""
    if axis not in AXES:
        raise ValueError(f"axis: unknown axis {axis!r}; expected one of {AXES}")
    if len(ranks) < 1:
        raise ValueError("ranks: need at least one point")
    for r in ranks:
        if not r > 0:
            raise ValueError(f"ranks: {r} is not a positive rank")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks: duplicate ranks in {list(ranks)}")
    return [math.log2(r) if axis == "log2" else float(r) for r in ranks]


def aurac(ranks: Sequence[int], scores: Sequence[float], axis: str = "log2") -> float:
    """Trapezoid area under (x, score) divided by (x_n - x_1), x = log2(rank) or rank.

    Unsorted ranks are sorted with their scores; a single point gives its own score. The log2
    axis weighs every doubling of rank equally, which is why it is the headline number.
    """
    if len(ranks) != len(scores):
        raise ValueError(f"scores: {len(scores)} scores for {len(ranks)} ranks")
    rank_axis(ranks, axis)  # the checks, before sorting
    points = sorted(zip(ranks, scores, strict=True))
    xs = rank_axis([r for r, _ in points], axis)
    ys = [float(s) for _, s in points]
    if len(xs) == 1:
        return ys[0]
    area = sum((xs[j + 1] - xs[j]) * (ys[j] + ys[j + 1]) / 2 for j in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])
