"""A sweep of settings (no budgets) as the report reads it from MLflow: every point is a study
whose parent run carries the sweep's name (SWEEP_TAG) and its value of each swept field
(SETTING_TAG_PREFIX), all in one experiment; each point's verdict artifact holds the paired
interval of every AURAC difference. From those alone the report draws the regime map: where
the paper's method wins (rankstudy.study.regime_map)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from rankstudy.core import mlflow_names as names
from rankstudy.study.regime_map import FOCUS, MapCell, point_cells, tally
from rankstudy_report.collect import find_study, read_verdict
from rankstudy_report.sweep import sweep_study_runs


@dataclass
class RegimeView:
    name: str
    keys: list[str]  # the swept spec fields, sorted
    cells: list[MapCell]
    runs: dict[str, str]  # a point's settings (JSON) -> its parent run id, the newest first
    points: int  # points whose study run is in the store (cells need a finished verdict)
    focus: str = FOCUS

    @property
    def reference_run(self) -> str:
        """The point the page details below the map: the newest."""
        return next(iter(self.runs.values()))

    @property
    def others(self) -> list[str]:
        return list(dict.fromkeys(c.other for c in self.cells))

    @property
    def rows(self) -> list[tuple[dict, dict[str, MapCell]]]:
        """(settings, other -> cell) per point that holds a verdict, in settings order."""
        by_point: dict[str, dict[str, MapCell]] = {}
        for c in self.cells:
            by_point.setdefault(json.dumps(c.settings), {})[c.other] = c
        rows = [(json.loads(k), v) for k, v in by_point.items()]
        return sorted(rows, key=lambda row: [str(row[0][k]) for k in self.keys])

    @property
    def tally(self) -> dict[str, dict[str, int]]:
        return tally(self.cells)


def settings_of(run) -> dict[str, object]:
    """A point's swept fields and values, from its study run's tags."""
    prefix = names.SETTING_TAG_PREFIX
    return {
        k.removeprefix(prefix): json.loads(v)
        for k, v in sorted(run.data.tags.items())
        if k.startswith(prefix)
    }


def collect_regime(
    client: MlflowClient, experiment: str | None, run_id: str | None, sweep: str | None
) -> RegimeView | None:
    """The sweep of settings named `sweep`, else the one the study found by experiment or run
    belongs to; None for a single study or a budget sweep (whose page is its frontier)."""
    parent = find_study(client, experiment, run_id)
    name = sweep or parent.data.tags.get(names.SWEEP_TAG)
    if name is None:
        return None
    runs = sweep_study_runs(client, parent.info.experiment_id, name)
    if not runs or any(names.BUDGET_TAG in r.data.tags for r in runs):
        return None
    newest: dict[str, object] = {}
    for run in runs:  # a point run again (a resumed sweep): its newest study run
        settings = settings_of(run)
        if settings:
            newest.setdefault(json.dumps(settings), run)
    if not newest:
        return None
    keys = list(json.loads(next(iter(newest))))
    cells = [
        c
        for point, run in newest.items()
        for c in point_cells(json.loads(point), read_verdict(client, run.info.run_id))
    ]
    return RegimeView(name, keys, cells, {k: r.info.run_id for k, r in newest.items()}, len(newest))
