"""MLflow records of a study, written by the study's driver alone.

One experiment per study; a parent run for the study; one child run per trial, created whole
when the trial has ended (so a killed study leaves no RUNNING child behind, and a resumed one
finds what it logged by its `rankstudy.trial_key` tag instead of logging it twice); one summary
run per method. Per-rank scores are one metric logged with step = rank, so the MLflow UI draws
the rank-accuracy curve. Only the driver writes: a fresh sqlite store written by several
processes at once fails in schema migration.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
import uuid
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rankstudy.core import mlflow_names as names
from rankstudy.core.method_codec import missing_tags, to_mlflow
from rankstudy.core.records import TrialRecord, TrialResult
from rankstudy.core.summaries import MethodSummary, StudySummary
from rankstudy.core.verdict import pair_gap
from rankstudy.core.verdict_records import Interval, Verdict

BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite database (MLflow's default,
    ./mlruns of the current directory, would put them in the temporary copy of the repo that
    `ray job submit` runs in); a tracking server's own default otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def ui_hint(uri: str, experiment_id: str, mlflow: str = "mlflow", port: int = 5000) -> str:
    """How to see a study's runs: the command that serves a local store, and the address of
    the experiment's runs page. MLflow 3 opens an experiment on its GenAI overview, where
    training runs stay hidden behind the "Model training" switch; the runs page's own
    address shows them directly."""
    page = f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"MLflow runs: {uri.rstrip('/')}/{page}"
    return (
        f"MLflow UI: {mlflow} ui --backend-store-uri {uri} --port {port}\n"
        f"  then open http://127.0.0.1:{port}/{page}"
    )


@contextlib.contextmanager
def store_creation(uri: str):
    """Around a process's first request to a sqlite store: MLflow creates a new store's tables
    on it, and two studies creating one store at once (one MLFLOW_TRACKING_URI exported for
    both) would both try ("table ... already exists"). A lock beside the database file lets
    one create it and the other find it made."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


class StudyTracker:
    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        with store_creation(uri):
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = self._experiment(experiment)
        self.parent_id: str | None = None

    def _experiment(self, name: str) -> str:
        """The experiment's id, created when there is none. A retried POST (see _create_run)
        finds the experiment its first try made: MLflow refuses the name, and it is read back."""
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location(self.uri))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def start_study(
        self, name: str, spec: dict, parent_id: str | None = None, tags: dict | None = None
    ) -> str:
        """Create the parent run, or reopen it (resume) when parent_id is given. spec: the
        resolved spec (overrides applied) that the study runs; the software versions go in its
        tags, so the report and the run table say what produced the numbers. tags: the study's
        own (a sweep point's SWEEP_TAG and BUDGET_TAG), set again on a reopened run."""
        if parent_id is not None:
            self.client.update_run(parent_id, status="RUNNING")
            for k, v in (tags or {}).items():
                self.client.set_tag(parent_id, k, v)
            self.parent_id = parent_id
            return parent_id
        tags = (
            {names.KIND_TAG: names.STUDY}
            | {f"{names.VERSION_TAG_PREFIX}{k}": v for k, v in software_versions().items()}
            | (tags or {})
        )
        self.parent_id = self._create_run(name, tags)
        self.client.log_dict(self.parent_id, spec, names.SPEC_ARTIFACT)
        return self.parent_id

    def log_reference(self, reference: dict[str, float]) -> None:
        """The planted task's reference curve (top-k of the planted deltas), step = rank."""
        now = int(time.time() * 1000)
        self._log(
            self.parent_id,
            metrics=[
                Metric(names.REFERENCE_SCORE, float(v), now, int(k)) for k, v in reference.items()
            ],
        )

    def log_base(self, base: dict[str, float]) -> None:
        """The base model's test scores (adapters off): `base_score` for the primary metric,
        `base_<metric>` for the others."""
        now = int(time.time() * 1000)
        self._log(
            self.parent_id,
            metrics=[Metric(names.base_metric(k), float(v), now, 0) for k, v in base.items()],
        )

    def finish_study(self, summary: StudySummary, status: str = "FINISHED") -> None:
        """The summary as an artifact, the study's wall time and the set-up its trials shared
        (no method's cost) as metrics, why each missing method is missing as tags, the verdict
        when the study has one."""
        now = int(time.time() * 1000)
        totals = [
            Metric(names.WALL_SECONDS, float(summary.wall_seconds), now, 0),
            Metric(names.SHARED_SETUP_SECONDS, float(summary.shared_setup_seconds), now, 0),
        ]
        self._log(self.parent_id, metrics=totals, tags=missing_tags(summary.missing))
        self.client.log_dict(self.parent_id, summary.wire(), names.SUMMARY_ARTIFACT)
        if summary.verdict is not None:
            self.log_verdict(summary.verdict)
        self.client.set_terminated(self.parent_id, status)

    def log_searches(self, storage: Path) -> None:
        """The study's Optuna storage (a sqlite file), at the artifacts' root under its own
        name: the report draws each arm's search from it, as it reads all else from MLflow."""
        self.client.log_artifact(self.parent_id, str(storage))

    def log_verdict(self, verdict: Verdict) -> None:
        """The verdict whole (verdict.json, which the report reads), and what to deploy as a
        tag, so the run table answers without opening it."""
        self.client.log_dict(self.parent_id, verdict.wire(), names.VERDICT_ARTIFACT)
        choice = verdict.recommendation
        tags = {names.RECOMMENDATION_TAG: f"{choice.method} at rank {choice.rank}"}
        if verdict.intervals.note is not None:
            tags[names.INTERVALS_NOTE_TAG] = verdict.intervals.note
        self._log(self.parent_id, tags=tags)

    def _create_run(self, name: str, tags: dict[str, str]) -> str:
        """A new run, created once. MLflow's client retries every request, a POST too, so a
        server killed after writing a run but before replying gets the run created again by the
        retry. Each creation carries a token of its own: another run with it is such a copy,
        and is deleted."""
        token = uuid.uuid4().hex
        tags = tags | {names.CREATION_TAG: token}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        for copy in self._runs(f"tags.`{names.CREATION_TAG}` = '{token}'"):
            if copy != run_id:
                self.client.delete_run(copy)
        return run_id

    def _runs(self, filter_string: str) -> list[str]:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string)
        return [r.info.run_id for r in runs]

    def _children(self, key: str) -> list[str]:
        return self._runs(
            f"tags.`{names.TRIAL_KEY_TAG}` = '{key}' "
            f"and tags.`{names.PARENT_TAG}` = '{self.parent_id}'"
        )

    def _child(self, key: str) -> str | None:
        return next(iter(self._children(key)), None)

    def log_trial(self, record: TrialRecord, result: TrialResult | None) -> str:
        """A child run for an ended search trial or test pass (once per key); status FAILED
        with the reason when it failed, the status tag "stopped" with the step when the
        search's scheduler stopped it early. A test pass logged later adds its test curve to
        its trial's run and marks it chosen."""
        key, error = record.key, record.failure
        run_id = self._child(key)
        new = run_id is None
        chosen = record.is_test and result is not None
        # else the record's own: names.OK, or names.STOPPED early by the search's scheduler
        status = names.FAILED if error else names.CHOSEN if chosen else record.status
        tags = {names.STATUS_TAG: status}
        if status == names.STOPPED:
            tags[names.STOPPED_AT_TAG] = str(record.stopped_at)
        if record.seed is not None:
            tags[names.SEED_TAG] = str(record.seed)
        if chosen:
            tags[names.CHOSEN_FOR_TAG] = ",".join(record.rules)
        if new:
            tags |= {
                names.PARENT_TAG: self.parent_id,
                names.KIND_TAG: names.TRIAL,
                names.TRIAL_KEY_TAG: key,
                names.ARM_TAG: record.arm,
                names.METHOD_TAG: record.method,
                names.RANK_TAG: record.rank,
                names.TRIAL_TAG: str(record.trial),
            }
            run_id = self._create_run(trial_run_name(record, status), tags)
            self._log(run_id, params={k: str(v) for k, v in record.params.items()})
        else:
            self.client.update_run(run_id, name=trial_run_name(record, status))
            for k, v in tags.items():
                self.client.set_tag(run_id, k, v)
        if result is not None:  # a test pass adds its test curve and the cost it now totals
            metrics = trial_metrics(result)
            if not new:
                added = (f"{names.TEST}_", names.AURAC_PREFIX, names.COST_PREFIX)
                metrics = [m for m in metrics if m.key.startswith(added)]
            self._log(run_id, metrics=metrics)
        if error is not None:
            self.client.set_tag(run_id, names.FAILURE_TAG, error[:4000])
        self.client.set_terminated(run_id, "FAILED" if error else "FINISHED")
        return run_id

    def delete_trial(self, key: str) -> None:
        """Remove a trial's child runs (MLflow keeps them, deleted, in its trash)."""
        for run_id in self._children(key):
            self.client.delete_run(run_id)

    def log_method(
        self,
        method: str,
        summary: MethodSummary,
        figure_path: Path | None,
        verdict: Verdict | None = None,
    ) -> None:
        """A summary run for a method (rankstudy.core.method_codec: AURAC, cost, curves), the
        curve as a table and a figure; with the study's verdict, the method's intervals and
        where it stands against the best."""
        tags = {
            names.PARENT_TAG: self.parent_id,
            names.KIND_TAG: names.METHOD,
            names.METHOD_TAG: method,
            names.TRIAL_KEY_TAG: names.method_run_key(method),
        }
        existing = self._child(names.method_run_key(method))
        name = f"{method} · summary · AURAC {summary.aurac_log2:.3f}"
        run_id = existing or self._create_run(name, tags)
        rows, own_tags = to_mlflow(summary)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in rows]
        self._log(run_id, metrics=metrics, tags=own_tags | verdict_tags(method, verdict))
        self.client.log_table(
            run_id, {"rank": summary.ranks, "score": summary.scores}, names.CURVE_ARTIFACT
        )
        if figure_path is not None:
            self.client.log_artifact(run_id, str(figure_path))
        self.client.set_terminated(run_id, "FINISHED")

    def _log(
        self,
        run_id: str,
        metrics: list[Metric] = (),
        params: dict | None = None,
        tags: dict | None = None,
    ):
        params = [Param(k, v[:6000]) for k, v in (params or {}).items()]
        tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, max(len(metrics), 1), BATCH):
            self.client.log_batch(
                run_id,
                metrics=list(metrics[i : i + BATCH]),
                params=params if i == 0 else [],
                tags=tags if i == 0 else [],
            )


def interval_text(i: Interval, confidence: float | None = None, signed: bool = False) -> str:
    """An interval as tags and the report write it, 0.812 [0.801, 0.823] (95%); signed: each
    number with its sign, as a difference is written."""
    f = "{:+.3f}" if signed else "{:.3f}"
    text = f"{f.format(i.point)} [{f.format(i.low)}, {f.format(i.high)}]"
    return text + (f" ({confidence:.0%})" if confidence is not None else "")


def verdict_tags(method: str, verdict: Verdict | None) -> dict[str, str]:
    """A method run's verdict tags: its AURAC (log2) interval, its paired difference from the
    best method ("best" for the best itself), the smallest rank tied with its own best; none
    without a verdict."""
    if verdict is None or method not in verdict.intervals.methods:
        return {}
    intervals, choice = verdict.intervals, verdict.recommendation
    tags = {
        names.INTERVAL_TAG: interval_text(
            intervals.methods[method].aurac_log2, intervals.confidence
        )
    }
    best = intervals.best
    if method == best:
        tags[names.VS_BEST_TAG] = "best"
    else:
        gap = pair_gap(intervals, method, best)
        state = "separated" if gap.separated else "not separated"
        tags[names.VS_BEST_TAG] = f"{interval_text(gap, signed=True)} vs {best}, {state}"
    if method in choice.per_method:
        tags[names.DEPLOY_RANK_TAG] = str(choice.per_method[method])
    return tags


def trial_metrics(result: TrialResult) -> list[Metric]:
    """Loss curve (step = optimizer step), validation and test scores (step = rank), cost."""
    now = int(time.time() * 1000)
    own = result.inference_rule
    out = [Metric(names.TRAIN_LOSS, float(v), now, i + 1) for i, v in enumerate(result.loss_curve)]
    curves = [
        (names.VAL, names.SCORE, result.validation_scores_by_rule),
        (names.TEST, names.SCORE, result.scores_by_rule),
    ]
    extras = ((names.VAL, result.validation_extra_scores), (names.TEST, result.extra_scores))
    for split, extra in extras:
        curves += [(split, metric, by_rule) for metric, by_rule in extra.items()]
    for split, metric, by_rule in curves:
        for rule, curve in by_rule.items():
            name = names.curve_metric(split, metric, rule, own)
            out += [Metric(name, float(v), now, int(k)) for k, v in curve.items()]
    for point in result.validation_curve:
        for k, v in point.scores.items():
            out.append(Metric(names.validation_at_rank(k), float(v), now, int(point.step)))
    out.append(Metric(names.SELECTION_METRIC, float(result.selection_metric), now, 0))
    for rule, v in result.selection_metric_by_rule.items():  # what chose it, per rule
        out.append(Metric(f"{names.SELECTION_RULE_PREFIX}{rule}", float(v), now, 0))
    for k, v in result.aurac.items():
        out.append(Metric(f"{names.AURAC_PREFIX}{k}", float(v), now, 0))
    for k, v in result.cost.model_dump().items():
        if isinstance(v, int | float):
            out.append(Metric(f"{names.COST_PREFIX}{k}", float(v), now, 0))
    return out


def trial_run_name(record: TrialRecord, status: str) -> str:
    """What the MLflow run table shows without configuring columns: arm, method and rank,
    trial number, seed of a repeat, status."""
    seed = f" · seed {record.seed}" if record.seed is not None else ""
    return f"{record.arm} · {record.method} r{record.rank} · trial {record.trial}{seed} · {status}"


def software_versions() -> dict[str, str]:
    """The versions behind a study's numbers."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("rankstudy", "torch", "transformers", "peft", "deepspeed", "ray", "optuna"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["mlflow"] = version("mlflow")
    return out
