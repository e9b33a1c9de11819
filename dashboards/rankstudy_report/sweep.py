"""A budget sweep as the report reads it from MLflow: every point of a sweep is a study whose
parent run carries the sweep's name (SWEEP_TAG) and its budget multiplier (BUDGET_TAG), all in
one experiment; each point's method summary runs hold AURAC (mean and spread over seeds) and
cost. From those alone the report draws the AURAC-compute frontier."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from rankstudy.core import mlflow_names as names
from rankstudy.core.arms import GRID_METHOD
from rankstudy.core.frontier import (
    AXES,
    TOLERANCE,
    FrontierPoint,
    FrontierRow,
    Points,
    frontier_points,
    frontier_table,
    reference_budget,
)
from rankstudy.core.method_codec import point_from_mlflow
from rankstudy.core.summaries import PointEntry
from rankstudy_report.collect import PAGE, ReportError, find_study


@dataclass
class SweepView:
    name: str
    points: Points  # budget -> method -> its entry at that budget
    runs: dict[float, str]  # budget -> the point's parent run id (the newest at that budget)
    tolerance: float = TOLERANCE

    @property
    def lines(self) -> dict[str, list[FrontierPoint]]:
        return frontier_points(self.points)

    @property
    def tables(self) -> dict[str, list[FrontierRow]]:
        """axis -> the frontier table; empty when no point scored the grid."""
        if not any(GRID_METHOD in methods for methods in self.points.values()):
            return {axis: [] for axis in AXES}
        return {
            axis: frontier_table(self.points, GRID_METHOD, self.tolerance, axis) for axis in AXES
        }

    @property
    def reference_run(self) -> str:
        """The point the page details below the frontier: the one the grid is read at."""
        with_grid = [b for b, methods in self.points.items() if GRID_METHOD in methods]
        return self.runs[reference_budget(with_grid or self.runs)]

    def budget_of(self, run_id: str) -> float | None:
        return next((b for b, r in self.runs.items() if r == run_id), None)


def sweep_study_runs(client: MlflowClient, experiment_id: str, sweep: str) -> list:
    """Every study run of the sweep (its points, and any point run again), the newest first."""
    return client.search_runs(
        [experiment_id],
        f"tags.`{names.KIND_TAG}` = '{names.STUDY}' and tags.`{names.SWEEP_TAG}` = '{sweep}'",
        order_by=["attributes.start_time DESC"],
        max_results=PAGE,
    )


def sweep_runs(client: MlflowClient, experiment_id: str, sweep: str) -> dict:
    """budget -> the newest study run of the sweep at that budget, budgets ascending."""
    newest: dict[float, object] = {}
    for run in sweep_study_runs(client, experiment_id, sweep):
        budget = run.data.tags.get(names.BUDGET_TAG)
        if budget is not None:
            newest.setdefault(float(budget), run)
    return dict(sorted(newest.items()))


def point_methods(client: MlflowClient, parent) -> dict[str, PointEntry]:
    """method -> its AURAC (log2), spread over seeds (None when it ran one seed: a method run
    holds a test curve per seed) and cost at one budget point, for every method the point
    scored (rankstudy.core.method_codec.point_from_mlflow)."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`{names.PARENT_TAG}` = '{parent.info.run_id}' "
        f"and tags.`{names.KIND_TAG}` = '{names.METHOD}'",
        order_by=["attributes.start_time ASC"],  # the order the study scored them in
        max_results=PAGE,
    )
    points = {run.data.tags[names.METHOD_TAG]: point_from_mlflow(run.data.metrics) for run in runs}
    return {m: p for m, p in points.items() if p is not None}


def collect_sweep(
    client: MlflowClient, experiment: str | None, run_id: str | None, sweep: str | None
) -> SweepView | None:
    """The sweep named `sweep`, else the one the study found by experiment or run belongs to;
    None when that study is no budget point (a single study's report)."""
    parent = find_study(client, experiment, run_id)
    name = sweep or parent.data.tags.get(names.SWEEP_TAG)
    if name is None:
        return None
    runs = sweep_runs(client, parent.info.experiment_id, name)
    if not runs:
        where = client.get_experiment(parent.info.experiment_id).name
        studies = client.search_runs(
            [parent.info.experiment_id], f"tags.`{names.KIND_TAG}` = '{names.STUDY}'"
        )
        known = sorted({s.data.tags.get(names.SWEEP_TAG) for s in studies} - {None})
        raise ReportError(
            f"--sweep: no study run in experiment {where!r} carries {names.SWEEP_TAG} = {name!r};"
            f" its sweeps: {known}"
        )
    points = {budget: point_methods(client, run) for budget, run in runs.items()}
    return SweepView(name, points, {b: r.info.run_id for b, r in runs.items()})
