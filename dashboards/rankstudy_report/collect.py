"""Everything a report shows, read from an MLflow tracking server: runs by search_runs, curves by
metric history, the spec as the parent run's artifact. Never the files a study wrote beside
MLflow, so a report can be built anywhere the tracking URI reaches."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from rankstudy.core import mlflow_names as names
from rankstudy.core.errors import InputError
from rankstudy.core.method_codec import from_mlflow, missing_from_tags
from rankstudy.core.methods import SERVED
from rankstudy.core.summaries import MethodCost, MethodSummary
from rankstudy.core.verdict_records import Verdict

PAGE = 1000  # runs per search_runs page
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small JSON file


class ReportError(InputError):
    """No study to report on: the message names what was asked for and what exists."""


@dataclass
class MethodResult:
    """A scored method: its summary as its summary run holds it (read back by
    rankstudy.core.method_codec), and that run. The page reads the summary's fields through the
    names below."""

    name: str
    summary: MethodSummary
    run_id: str

    @property
    def ranks(self) -> list[int]:
        return self.summary.ranks

    @property
    def scores(self) -> list[float]:
        return self.summary.scores

    @property
    def seed_scores(self) -> dict[str, list[float]]:
        """seed -> score at each rank."""
        return self.summary.scores_by_seed

    @property
    def extra(self) -> dict[str, list[float]]:
        """extra metric (token_nll, ...) -> its mean at each rank."""
        return self.summary.extra_scores

    @property
    def cost(self) -> MethodCost:
        return self.summary.cost

    @property
    def trials(self) -> int:
        """Its search trials (cost.paid_runs: every run it paid for)."""
        return self.summary.search_trials


@dataclass
class TrialRun:
    """A search trial or seed repeat, as its child run holds it."""

    run_id: str
    name: str
    arm: str
    trial: int | None
    seed: str | None
    status: str  # ok, failed, chosen or stopped (early, by the search's scheduler)
    params: dict[str, str]
    validation: dict[str, float]  # inference rule -> the validation score the search compared
    chosen_for: str  # the rules it was chosen and tested for ("" unless chosen)
    failure: str | None
    loss: dict[int, float] = field(default_factory=dict)  # step -> training loss, chosen only
    stopped_at: str | None = None  # the step a stopped trial was stopped at


@dataclass
class StudyView:
    name: str
    experiment: str
    run_id: str
    status: str
    started: int  # ms since the epoch
    tracking_uri: str
    spec: dict
    versions: dict[str, str]
    methods: dict[str, MethodResult]
    missing: dict[str, str]  # method the spec asks for -> why it has no result
    reference: dict[int, float] | None
    base: dict[str, float]  # the base model's test score ("score") and extra metrics
    metric: str  # what the scores measure
    trials: list[TrialRun]
    shared_setup_seconds: float | None  # device time of set-up every trial reused
    verdict: Verdict | None = None  # None: a study logged before intervals


def find_study(client: MlflowClient, experiment: str | None, run_id: str | None):
    """The study's parent run: run_id when given, else the newest study in the experiment."""
    if run_id is not None:
        run = client.get_run(run_id)
        if run.data.tags.get(names.KIND_TAG) != names.STUDY:
            raise ReportError(f"--run: {run_id} is not a rankstudy study run")
        return run
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"--experiment: no experiment {experiment!r}; the store holds {known}")
    runs = client.search_runs(
        [found.experiment_id],
        f"tags.`{names.KIND_TAG}` = '{names.STUDY}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ReportError(f"--experiment: {experiment!r} holds no rankstudy study run")
    return runs[0]


def children(client: MlflowClient, parent) -> list:
    """Every child run of the study, page by page."""
    out, token = [], None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            f"tags.`{names.PARENT_TAG}` = '{parent.info.run_id}'",
            max_results=PAGE,
            page_token=token,
        )
        out += page
        token = page.token
        if not token:
            return out


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """step -> value; a step logged twice (a resumed study) keeps its newest value."""
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in points}


def method_result(client: MlflowClient, run, metric: str = "score") -> MethodResult:
    """A method's summary run; metric: what its scores measure, for a run logged before it
    said so (the spec's)."""
    run_id = run.info.run_id
    summary = from_mlflow(
        run.data.tags, run.data.metrics, lambda key: history(client, run_id, key), metric
    )
    return MethodResult(run.data.tags[names.METHOD_TAG], summary, run_id)


def trial_run(run) -> TrialRun:
    tags = run.data.tags
    return TrialRun(
        run_id=run.info.run_id,
        name=tags.get(names.RUN_NAME_TAG, run.info.run_id),
        arm=tags.get(names.ARM_TAG, "?"),
        trial=int(tags[names.TRIAL_TAG]) if tags.get(names.TRIAL_TAG, "None") != "None" else None,
        seed=tags.get(names.SEED_TAG),
        status=tags.get(
            names.STATUS_TAG, names.FAILED if run.info.status == "FAILED" else names.OK
        ),
        params=dict(run.data.params),
        validation={
            k.removeprefix(names.SELECTION_RULE_PREFIX): v
            for k, v in run.data.metrics.items()
            if k.startswith(names.SELECTION_RULE_PREFIX)
        },
        chosen_for=tags.get(names.CHOSEN_FOR_TAG, ""),
        failure=tags.get(names.FAILURE_TAG),
        stopped_at=tags.get(names.STOPPED_AT_TAG),
    )


def method_arm_names(method: str, arms: set[str]) -> list[str]:
    """The arms a method is scored from, among those the study recorded."""
    kind = SERVED[method][0] if method in SERVED else None
    if kind is not None and kind.grid:
        return sorted(a for a in arms if a.startswith(f"{kind.name}_r"))
    return [kind.name if kind is not None else method]


def why_missing(method: str, trials: list[TrialRun], study_status: str) -> str:
    """Why a method the spec asks for has no summary run, from its arms' trial runs."""
    arms = {t.arm for t in trials}
    if method in SERVED and SERVED[method][0].grid and not method_arm_names(method, arms):
        return "no LoRA-grid trial was recorded"
    reasons = []
    for arm in method_arm_names(method, arms):
        runs = [t for t in trials if t.arm == arm]
        failed = [t for t in runs if t.status == names.FAILED]
        if not runs:
            reasons.append(f"arm {arm}: no trial was recorded")
        elif len(failed) == len(runs):
            which = "its only trial" if len(runs) == 1 else f"all {len(runs)} trials"
            reasons.append(f"arm {arm}: {which} failed ({failed[0].failure})")
        elif failed and any(t.seed is not None for t in failed):
            t = next(t for t in failed if t.seed is not None)
            reasons.append(f"arm {arm}: its chosen trial failed at seed {t.seed} ({t.failure})")
        elif not any(t.status == names.CHOSEN for t in runs):
            reasons.append(f"arm {arm}: no chosen trial was tested")
    if not reasons:
        reasons.append(f"no summary run; the study is {study_status}")
    return "; ".join(reasons)


def missing_methods(
    order: list[str], found: dict, tags: dict[str, str], trials: list[TrialRun], status: str
) -> dict[str, str]:
    """Why each method the spec asks for has no summary run: as the study recorded it
    (rankstudy.core.method_codec.missing_tags), else, for a study that recorded none (logged
    before it did so, or not finished), worked out from its arms' trial runs."""
    recorded = missing_from_tags(tags)
    return {m: recorded.get(m) or why_missing(m, trials, status) for m in order if m not in found}


def artifact_json(client: MlflowClient, run_id: str, path: str, missing_ok: bool = False):
    """A JSON artifact of a run, through this client's store, local or served; None when
    missing_ok and the run has none (the verdict of a study logged before intervals)."""
    if missing_ok and path not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def read_verdict(client: MlflowClient, run_id: str) -> Verdict | None:
    """A study run's verdict (its verdict.json), None for a study logged before intervals."""
    raw = artifact_json(client, run_id, names.VERDICT_ARTIFACT, missing_ok=True)
    return None if raw is None else Verdict.model_validate(raw)


def collect(tracking_uri: str, experiment: str | None = None, run_id: str | None = None):
    """Read one study from MLflow into a StudyView."""
    client = MlflowClient(tracking_uri)
    parent = find_study(client, experiment, run_id)
    spec = artifact_json(client, parent.info.run_id, names.SPEC_ARTIFACT)
    runs = children(client, parent)
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get(names.KIND_TAG), []).append(run)
    metric = spec.get("task", {}).get("metric", "teacher agreement")
    found = {
        r.data.tags[names.METHOD_TAG]: method_result(client, r, metric)
        for r in by_kind.get(names.METHOD, [])
    }
    order = list(spec.get("methods", [])) + sorted(set(found) - set(spec.get("methods", [])))
    trials = sorted(
        (trial_run(r) for r in by_kind.get(names.TRIAL, [])),
        key=lambda t: (t.arm, t.trial if t.trial is not None else -1, t.seed or ""),
    )
    for t in trials:
        if t.status == names.CHOSEN:
            t.loss = history(client, t.run_id, names.TRAIN_LOSS)
    status = parent.info.status.lower()
    reference = history(client, parent.info.run_id, names.REFERENCE_SCORE) or None
    base = {  # the base model's test scores: base_score (the primary metric), base_<metric>
        k.removeprefix(names.BASE_PREFIX): v
        for k, v in parent.data.metrics.items()
        if k.startswith(names.BASE_PREFIX)
    }
    return StudyView(
        name=parent.data.tags.get(names.RUN_NAME_TAG, parent.info.run_id),
        experiment=client.get_experiment(parent.info.experiment_id).name,
        run_id=parent.info.run_id,
        status=status,
        started=parent.info.start_time,
        tracking_uri=tracking_uri,
        spec=spec,
        versions={
            k.removeprefix(names.VERSION_TAG_PREFIX): v
            for k, v in sorted(parent.data.tags.items())
            if k.startswith(names.VERSION_TAG_PREFIX)
        },
        methods={m: found[m] for m in order if m in found},
        missing=missing_methods(order, found, parent.data.tags, trials, status),
        reference=reference,
        base=base,
        metric=metric,
        trials=trials,
        shared_setup_seconds=parent.data.metrics.get(names.SHARED_SETUP_SECONDS),
        verdict=read_verdict(client, parent.info.run_id),
    )
