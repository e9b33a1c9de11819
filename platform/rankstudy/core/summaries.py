"""The summaries a study and a sweep end with, each defined once: a method's score and cost
(MethodSummary), the study's (StudySummary, study_summary.json) and a budget sweep's
(SweepSummary, sweep_summary.json). rankstudy.core.scoring makes a MethodSummary,
rankstudy.study.summary a StudySummary, rankstudy.study.sweep a SweepSummary;
rankstudy.core.method_codec writes a MethodSummary to MLflow and reads it back for the report.

Three counts were once all called "trials"; each has its own name here, and keeps the old one
as its JSON key (files written before still read, and write the same):
- MethodSummary.search_trials: the search trials of the method's arms (not superseded);
- MethodCost.paid_runs: every run whose compute the cost totals (search trials the scheduler
  stopped too, test passes, seed repeats);
- PointEntry.search_trials: a sweep point's MethodSummary.search_trials.

Torch-free and MLflow-free: the CLI and the report read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, ValidationError, model_serializer

from rankstudy.core.records import _Record, write_json
from rankstudy.core.verdict_records import CurveIntervals, Verdict

SUMMARY_FILE = "study_summary.json"
SWEEP_SUMMARY_FILE = "sweep_summary.json"
# study_summary.json and sweep_summary.json carry no version key: both were written before
# versions, and their keys are kept. Bump by adding one (readers then treat a file without it
# as this first shape).


class SummaryError(ValueError):
    """A summary file that cannot be used: cut short, corrupt, or not a summary."""


class _Summary(_Record):
    """A record whose optional keys are left out of its JSON when empty, as the dicts before it
    left them out: `_omit_none` when None, `_omit_unset` until set (a study's report and
    registration, written only once the study reached them)."""

    model_config = ConfigDict(
        extra="forbid",
        ser_json_inf_nan="constants",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )
    _omit_none: ClassVar[tuple[str, ...]] = ()
    _omit_unset: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler) -> dict[str, Any]:
        out = handler(self)
        for name in self._omit_none:
            if getattr(self, name) is None:
                out.pop(self._key(name), None)
        for name in self._omit_unset:
            if name not in self.model_fields_set:
                out.pop(self._key(name), None)
        return out

    @classmethod
    def _key(cls, name: str) -> str:
        return cls.model_fields[name].alias or name

    def wire(self) -> dict[str, Any]:
        """The JSON object the summary's file holds."""
        return self.model_dump(mode="json")


class MethodCost(_Summary):
    """Everything a method spent (rankstudy.core.scoring.total_cost): its arms' search trials,
    test passes and seed repeats, less what they spent scoring other methods' rules."""

    paid_runs: int = Field(alias="trials")  # the runs whose compute is totalled here
    device_seconds: float
    train_seconds: float
    eval_seconds: float
    flops: float
    train_flops: float | None = None  # None: a summary written before it was counted
    train_tokens: int
    device_hours: float
    money: float | None  # None: the spec gives no price per device-hour

    _omit_none = ("train_flops",)

    def numbers(self) -> dict[str, float]:
        """Its numeric fields by JSON key (money and train_flops when known)."""
        return {k: v for k, v in self.wire().items() if isinstance(v, int | float)}


class MethodSummary(_Summary):
    """A scored method: its test curve (mean over seeds, and each seed's), AURAC on both rank
    axes (mean and population std over seeds), cost; the mean curve of each extra metric; with
    a verdict, the method's own intervals (its entry of the verdict's intervals)."""

    metric: str  # what `scores` measure
    ranks: list[int]
    scores: list[float]  # mean over seeds, at each rank
    extra_scores: dict[str, list[float]] = Field(
        default_factory=dict
    )  # metric -> mean over seeds at each rank
    scores_by_seed: dict[str, list[float]]  # str(seed) -> score at each rank
    aurac_log2: float
    aurac_linear: float
    aurac_log2_std: float
    aurac_linear_std: float
    inference_rule: str | None  # the rule it is served with (None: read from an old run)
    cost: MethodCost
    search_trials: int = Field(alias="trials")
    intervals: CurveIntervals | None = None  # its entry of the verdict's (None: no verdict)

    _omit_none = ("intervals",)

    @property
    def seeds(self) -> int:
        return len(self.scores_by_seed)

    @property
    def spread(self) -> float | None:
        """The AURAC (log2) spread over seeds; None for one seed (no spread was measured)."""
        return self.aurac_log2_std if self.seeds > 1 else None


class MlflowRefs(_Summary):
    """Where the study recorded: its MLflow store, experiment and parent run."""

    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None


class StudySummary(_Summary):
    """study_summary.json: every scored method, why each other method the spec asks for is not
    scored (`missing`, the study's own reasons, which it also records in MLflow), the verdict
    (rankstudy.core.verdict: intervals and recommendation) when the study has one, the planted
    reference and the base model's scores when measured; the report and registered model once
    the study reached them."""

    study: str
    spec: str  # the spec file, resolved
    seeds: list[int]
    wall_seconds: float
    shared_setup_seconds: float  # device time of set-up every trial reused (no method's cost)
    methods: dict[str, MethodSummary]
    missing: dict[str, str]  # method -> why it is not scored
    mlflow: MlflowRefs
    verdict: Verdict | None = None
    reference: dict[str, float] | None = None  # str(rank) -> the planted top-k score
    base_scores: dict[str, float] | None = None  # metric -> the base model's test score
    report: str | None = None  # the HTML report's path (None: not built)
    registered: str | None = None  # the registered model's models:/ URI

    _omit_none = ("verdict", "reference", "base_scores")
    _omit_unset = ("report", "registered")

    @property
    def metric(self) -> str:
        """What the methods' scores measure."""
        return next((m.metric for m in self.methods.values()), "score")


class PointEntry(_Summary):
    """A method at one budget point of a sweep, as the sweep compares it (and
    rankstudy.core.frontier reads it): AURAC log2 mean and spread over seeds (None for one
    seed), the linear AURAC, cost, search trials."""

    aurac: float
    std: float | None
    aurac_linear: float | None = None  # None: read from the report's frontier alone
    flops: float
    device_seconds: float
    search_trials: int | None = Field(None, alias="trials")

    _omit_none = ("aurac_linear", "search_trials")

    @classmethod
    def of(cls, summary: MethodSummary) -> PointEntry:
        return cls(
            aurac=summary.aurac_log2,
            std=summary.spread,
            aurac_linear=summary.aurac_linear,
            flops=summary.cost.flops,
            device_seconds=summary.cost.device_seconds,
            search_trials=summary.search_trials,
        )


class SweepSummary(_Summary):
    """One budget sweep (a `group` of sweep points): its budgets, the methods of each point
    that finished (budget key -> method -> entry), every point's folder, the methods a
    finished point did not score and why, whether every point finished."""

    sweep: str | None
    budgets: list[float | None]
    points: dict[str, dict[str, PointEntry]] = Field(default_factory=dict)
    folders: dict[str, str] = Field(default_factory=dict)  # budget key -> the point's folder
    missing: dict[str, dict[str, str]] | None = None  # budget key -> method -> why
    complete: bool = False

    _omit_none = ("missing",)


def write_study_summary(out_dir: Path, summary: StudySummary) -> Path:
    """<out_dir>/study_summary.json."""
    return write_json(Path(out_dir) / SUMMARY_FILE, summary.wire())


def _read(path: Path, what: str, read_text: Callable[[Path], str]) -> Any:
    try:
        return json.loads(read_text(path))
    except ValueError as e:
        raise SummaryError(
            f"{path} cannot be read as a {what} (cut short or corrupt: {e})"
        ) from None


def read_study_summary(
    path: str | Path, read_text: Callable[[Path], str] = lambda p: Path(p).read_text()
) -> StudySummary:
    """A study_summary.json (a folder: the one in it). Raises SummaryError when it is not one."""
    path = Path(path)
    path = path / SUMMARY_FILE if path.is_dir() else path
    try:
        return StudySummary.model_validate(_read(path, "study summary", read_text))
    except ValidationError as e:
        raise SummaryError(f"{path} is not a study summary: {e}") from None


def sweep_body(summaries: list[SweepSummary]) -> dict:
    """sweep_summary.json's object: the one sweep's summary, or {"sweeps": [...]} when budgets
    are crossed with a `sweep`."""
    wired = [s.wire() for s in summaries]
    return wired[0] if len(wired) == 1 else {"sweeps": wired}


def write_sweep_summaries(out: Path, summaries: list[SweepSummary]) -> Path:
    """<out>/sweep_summary.json."""
    return write_json(Path(out) / SWEEP_SUMMARY_FILE, sweep_body(summaries))


def read_sweep_summaries(path: str | Path) -> list[SweepSummary]:
    """Every sweep a sweep_summary.json (a folder: the one in it) holds."""
    path = Path(path)
    path = path / SWEEP_SUMMARY_FILE if path.is_dir() else path
    body = _read(path, "sweep summary", lambda p: Path(p).read_text())
    try:
        return [SweepSummary.model_validate(s) for s in body.get("sweeps", [body])]
    except (ValidationError, AttributeError) as e:
        raise SummaryError(f"{path} is not a sweep summary: {e}") from None
