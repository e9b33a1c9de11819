"""The AURAC-compute frontier of a budget sweep (DESIGN.md section 8): each method's AURAC
against the compute it spent, over the sweep's training budgets, and the two readings a team
choosing between one run and a LoRA grid needs: a method's AURAC at the grid's own compute, and
the least compute at which it comes within a tolerance of the grid's AURAC.

Plain Python (no torch, no MLflow): the report and the sweep's summary both read it. Costs span
orders of magnitude (x0.25 to x4 of a budget, one run against |S| runs), so between two budget
points a value is interpolated linearly in log10 cost, the way the chart's log x axis draws the
line between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from rankstudy.core.arms import GRID_METHOD
from rankstudy.core.summaries import PointEntry

AXES = ("flops", "device_seconds")
TOLERANCE = 0.01  # "within 0.01 of the grid's AURAC" (DESIGN.md section 8)
ROUNDING = 1e-12  # an AURAC equal to the target up to float rounding reaches it


@dataclass(frozen=True)
class FrontierPoint:
    """One method at one budget: its AURAC (log2, mean over seeds), the spread over seeds (None:
    one seed), and everything it spent."""

    budget: float
    aurac: float
    std: float | None
    flops: float
    device_seconds: float

    def cost(self, axis: str) -> float:
        return {"flops": self.flops, "device_seconds": self.device_seconds}[axis]


@dataclass(frozen=True)
class GridReference:
    """The grid's point every single-run method is read against: budget 1.0 (the spec's own
    budget) when the sweep has it, else the grid's largest budget."""

    budget: float
    aurac: float
    cost: float


@dataclass(frozen=True)
class FrontierRow:
    """One single-run method read against the grid, on one cost axis."""

    method: str
    axis: str
    grid: GridReference
    tolerance: float
    aurac_at_grid_compute: float | None  # None: the grid's cost lies outside its points
    reached_at: float | None  # least cost reaching grid AURAC - tolerance; None: not reached
    reached_at_cheapest: bool  # already reached at its cheapest point: the least may be lower

    @property
    def target(self) -> float:
        return self.grid.aurac - self.tolerance


Points = dict[float, dict[str, PointEntry]]  # budget -> method -> its entry at that budget


def frontier_points(points: Points) -> dict[str, list[FrontierPoint]]:
    """{budget: {method: its entry}} -> {method: its points sorted by FLOPs}, methods in the
    order they first appear."""
    lines: dict[str, list[FrontierPoint]] = {}
    for budget, methods in points.items():
        for method, p in methods.items():
            point = FrontierPoint(float(budget), p.aurac, p.std, p.flops, p.device_seconds)
            lines.setdefault(method, []).append(point)
    return {m: sorted(line, key=lambda p: (p.flops, p.budget)) for m, line in lines.items()}


def reference_budget(budgets) -> float:
    """The budget the grid is read at: 1.0, the spec's own, when swept; else the largest."""
    budgets = {float(b) for b in budgets}
    return 1.0 if 1.0 in budgets else max(budgets)


def grid_reference(line: list[FrontierPoint], axis: str) -> GridReference:
    """The grid at budget 1.0, else at its largest budget."""
    point = {p.budget: p for p in line}[reference_budget(p.budget for p in line)]
    return GridReference(point.budget, point.aurac, point.cost(axis))


def on_log_axis(line: list[FrontierPoint], axis: str) -> list[FrontierPoint]:
    """The points a log cost axis can hold (cost > 0), cheapest first."""
    return sorted((p for p in line if p.cost(axis) > 0), key=lambda p: p.cost(axis))


def log_fraction(x: float, low: float, high: float) -> float:
    """Where x lies between low and high on a log axis: 0 at low, 1 at high."""
    return (math.log10(x) - math.log10(low)) / (math.log10(high) - math.log10(low))


def aurac_at(line: list[FrontierPoint], cost: float, axis: str) -> float | None:
    """The method's AURAC at `cost`, interpolated in log cost between its two bracketing
    points; None when `cost` lies outside its points."""
    points = on_log_axis(line, axis)
    for p in points:
        if p.cost(axis) == cost:
            return p.aurac
    for a, b in pairwise(points):
        if a.cost(axis) < cost < b.cost(axis):
            return a.aurac + log_fraction(cost, a.cost(axis), b.cost(axis)) * (b.aurac - a.aurac)
    return None


def reached_at(line: list[FrontierPoint], target: float, axis: str) -> float | None:
    """The least cost at which the method's line first reaches `target`: a point's own cost,
    or the log-interpolated cost where the segment into the first point at or above the target
    crosses it; None when no point reaches it."""
    points = on_log_axis(line, axis)
    if points and points[0].aurac >= target - ROUNDING:
        return points[0].cost(axis)
    for a, b in pairwise(points):
        if b.aurac >= target - ROUNDING:
            share = min(1.0, (target - a.aurac) / (b.aurac - a.aurac))
            low, high = math.log10(a.cost(axis)), math.log10(b.cost(axis))
            return 10 ** (low + share * (high - low))
    return None


def frontier_table(
    points: Points, grid: str = GRID_METHOD, tolerance: float = TOLERANCE, axis: str = "flops"
) -> list[FrontierRow]:
    """One row per single-run method (every method but `grid`), read on the `axis` cost."""
    if axis not in AXES:
        raise ValueError(f"axis: {axis!r} is not one of {AXES}")
    lines = frontier_points(points)
    if grid not in lines:
        raise ValueError(f"no {grid!r} point in the sweep: nothing to read the frontier against")
    ref = grid_reference(lines[grid], axis)
    rows = []
    for method, line in lines.items():
        if method == grid:
            continue
        reached = reached_at(line, ref.aurac - tolerance, axis)
        cheapest = on_log_axis(line, axis)[:1]
        rows.append(
            FrontierRow(
                method=method,
                axis=axis,
                grid=ref,
                tolerance=tolerance,
                aurac_at_grid_compute=aurac_at(line, ref.cost, axis),
                reached_at=reached,
                reached_at_cheapest=bool(cheapest) and reached == cheapest[0].cost(axis),
            )
        )
    return rows
