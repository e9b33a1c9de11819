"""A spec's sweep: the study points it expands into (the product of its `sweep` fields'
values and its training `budgets`), and what a sweep of budgets ends with, sweep_summary.json
and a table of every method at every budget.

Each point is a whole study, run and resumed as any other (rankstudy.study.driver), in <out>/<label>
under the name <name>-<label>. A point of a budget sweep is the same study (search, seeds,
methods) with its training budget multiplied, so AURAC against compute can be read across
points (rankstudy.core.frontier). Plain Python: `rankstudy plan` expands sweeps without torch
or Ray.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from rankstudy.core import mlflow_names as names
from rankstudy.core.arms import GRID_METHOD
from rankstudy.core.frontier import AXES, TOLERANCE, frontier_table
from rankstudy.core.spec import StudySpec, scaled_steps
from rankstudy.core.summaries import (
    SWEEP_SUMMARY_FILE,
    PointEntry,
    StudySummary,
    SweepSummary,
    read_sweep_summaries,
    write_sweep_summaries,
)


@dataclass(frozen=True)
class SweepPoint:
    """One study of a sweep. group: the sweep it belongs to (its SWEEP_TAG): the spec's name,
    plus the point's other sweep values when budgets are crossed with a `sweep`, so that each
    line of budgets is one sweep; None for a spec with no sweep. budget: its multiple, or None."""

    label: str
    overrides: list[str] = field(default_factory=list)
    group: str | None = None
    budget: float | None = None
    settings: dict[str, object] = field(default_factory=dict)  # swept field -> its value here

    @property
    def tags(self) -> dict[str, str]:
        """The tags its MLflow parent run carries."""
        tags = {names.SWEEP_TAG: self.group} if self.group is not None else {}
        tags |= {names.SETTING_TAG_PREFIX + k: json.dumps(v) for k, v in self.settings.items()}
        if self.budget is not None:
            tags[names.BUDGET_TAG] = budget_key(self.budget)
        return tags


def budget_key(budget: float) -> str:
    """How a budget is named in tags and in sweep_summary.json: str(float), e.g. "0.25", "1.0"."""
    return str(float(budget))


def budget_override(spec: StudySpec, budget: float) -> str:
    """The spec's training budget (steps or epochs, whichever it gives) times `budget`."""
    t = spec.training
    if t.steps is not None:
        return f"training.steps={scaled_steps(t.steps, budget)}"
    return f"training.epochs={json.dumps(t.epochs * budget)}"


def sweep_points(spec: StudySpec) -> list[SweepPoint]:
    """The points of the spec's sweep, in order: every value of its `sweep` fields (their
    product), each at every budget. A spec with neither is one point with no label."""
    keys = list(spec.sweep or {})
    budgets: list[float | None] = list(spec.budgets) if spec.budgets else [None]
    if not keys and budgets == [None]:
        return [SweepPoint("")]
    points = []
    for values in itertools.product(*(spec.sweep[k] for k in keys)):
        pairs = list(zip(keys, values, strict=True))
        variant = "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in pairs)
        sets = [f"{k}={json.dumps(v)}" for k, v in pairs]
        group = f"{spec.name}-{variant}" if variant and spec.budgets else spec.name
        for budget in budgets:
            label = "-".join(part for part in (variant, budget and f"budget{budget:g}") if part)
            extra = [budget_override(spec, budget), "budgets=null"] if budget else []
            overrides = [*sets, *extra, f"name={spec.name}-{label}"]
            points.append(SweepPoint(label, overrides, group, budget, dict(pairs)))
    return points


def shared_tracking(spec: StudySpec, uri: str) -> list[str]:
    """The overrides that put every point of a sweep into one MLflow store and experiment
    (uri: where the base study would record; its experiment: the base spec's, else its name)."""
    return [
        f"tracking.uri={uri}",
        f"tracking.experiment={spec.tracking.experiment or spec.name}",
    ]


def point_entry(summary: StudySummary) -> dict[str, PointEntry]:
    """A point's methods as a sweep compares them (rankstudy.core.frontier reads aurac, std, flops
    and device_seconds): AURAC log2 mean and spread over seeds (None for one seed: no spread
    was measured), the linear AURAC, total cost."""
    return {m: PointEntry.of(s) for m, s in summary.methods.items()}


def sweep_summaries(
    points: list[SweepPoint], folders: list[Path], done: dict[str, StudySummary]
) -> list[SweepSummary]:
    """One summary per budget sweep (group): its budgets, its points' methods (those of the
    points in `done`, folder -> study summary) and every point's folder."""
    out: dict[str | None, SweepSummary] = {}
    for point, folder in zip(points, folders, strict=True):
        entry = out.setdefault(point.group, SweepSummary(sweep=point.group, budgets=[]))
        key = budget_key(point.budget)
        entry.budgets.append(point.budget)
        entry.folders[key] = str(folder)
        if str(folder) in done:
            entry.points[key] = point_entry(done[str(folder)])
            if done[str(folder)].missing:
                entry.missing = (entry.missing or {}) | {key: done[str(folder)].missing}
    for entry in out.values():
        entry.complete = len(entry.points) == len(entry.budgets)
    return list(out.values())


def write_sweep_summary(out: Path, summaries: list[SweepSummary]) -> Path:
    """<out>/sweep_summary.json: the one sweep's summary, or {"sweeps": [...]} when budgets
    are crossed with a `sweep`. Rewritten after every point, so a killed sweep's file says
    which points finished ("complete": false until all have)."""
    return write_sweep_summaries(out, summaries)


def finished_folders(out: Path) -> set[str]:
    """The folders of the points a sweep's summary lists as finished (a resume skips them)."""
    if not (out / SWEEP_SUMMARY_FILE).exists():
        return set()
    return {s.folders[key] for s in read_sweep_summaries(out) for key in s.points}


def sweep_table(summary: SweepSummary) -> str:
    """Every method at every budget: AURAC log2 (± its spread over seeds, n/a for one seed)
    and FLOPs."""
    keys = [budget_key(b) for b in summary.budgets if budget_key(b) in summary.points]
    methods = list(dict.fromkeys(m for k in keys for m in summary.points[k]))
    lines = [
        f"sweep {summary.sweep}: AURAC log2 ± seeds / FLOPs per training budget",
        f"{'method':<30}" + "".join(f"{'x' + k:>20}" for k in keys),
    ]
    for m in methods:
        cells = []
        for k in keys:
            p = summary.points[k].get(m)
            if p is None:
                cells.append("not scored")
                continue
            spread = "n/a" if p.std is None else f"{p.std:.3f}"
            cells.append(f"{p.aurac:.3f}±{spread} {p.flops:.1e}")
        lines.append(f"{m:<30}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def frontier_text(summary: SweepSummary, tolerance: float = TOLERANCE) -> str:
    """The frontier table (rankstudy.core.frontier) of a sweep: per single-run method, its AURAC at
    the LoRA grid's compute and the least compute at which it reaches the grid's AURAC minus
    `tolerance`, on FLOPs and device-seconds."""
    points = {float(k): methods for k, methods in summary.points.items()}
    try:
        by_axis = {a: frontier_table(points, tolerance=tolerance, axis=a) for a in AXES}
    except ValueError as e:  # no grid in the sweep: nothing to read against
        return f"frontier: {e}"
    ref = {a: rows[0].grid for a, rows in by_axis.items() if rows}
    if not ref:
        return "frontier: no single-run method in the sweep"
    flops, seconds = ref["flops"], ref["device_seconds"]
    lines = [
        f"frontier against {GRID_METHOD} at budget x{flops.budget:g}: AURAC {flops.aurac:.3f}, "
        f"{flops.cost:.2e} FLOPs, {seconds.cost:.0f} device-s; "
        f"target {flops.aurac - tolerance:.3f}",
        f"{'method':<30}{'AURAC at grid FLOPs':>20}{'reached at FLOPs':>26}{'at device-s':>14}",
    ]
    for row, by_time in zip(by_axis["flops"], by_axis["device_seconds"], strict=True):
        at = (
            "outside its sweep"
            if row.aurac_at_grid_compute is None
            else (f"{row.aurac_at_grid_compute:.3f}")
        )
        reached = (
            "not reached"
            if row.reached_at is None
            else (
                f"{'<=' if row.reached_at_cheapest else ''}{row.reached_at:.2e} "
                f"({row.reached_at / flops.cost:.2f}x grid)"
            )
        )
        secs = "-" if by_time.reached_at is None else f"{by_time.reached_at:.0f}"
        lines.append(f"{row.method:<30}{at:>20}{reached:>26}{secs:>14}")
    return "\n".join(lines)
