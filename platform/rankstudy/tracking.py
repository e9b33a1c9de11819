"""MLflow records of a study, written by the study's driver alone.

One experiment per study; a parent run for the study; one child run per trial, created whole
when the trial has ended (so a killed study leaves no RUNNING child behind, and a resumed one
finds what it logged by its `rankstudy.trial_key` tag instead of logging it twice); one summary
run per method. Per-rank scores are one metric logged with step = rank, so the MLflow UI draws
the rank-accuracy curve. Only the driver writes: a fresh sqlite store written by several
processes at once fails in schema migration.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from rankstudy.records import TrialRecord, TrialResult

BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def tracking_uri(spec_uri: str | None, out_dir: Path) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else a sqlite file in the study's directory."""
    return (
        spec_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
    )


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


class StudyTracker:
    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location(uri))
        )
        self.parent_id: str | None = None

    def start_study(self, name: str, spec: dict, parent_id: str | None = None) -> str:
        """Create the parent run, or reopen it (resume) when parent_id is given. spec: the
        resolved spec (overrides applied) that the study runs; the software versions go in its
        tags, so the report and the run table say what produced the numbers."""
        if parent_id is not None:
            self.client.update_run(parent_id, status="RUNNING")
            self.parent_id = parent_id
            return parent_id
        tags = {"rankstudy.kind": "study"} | {
            f"version.{k}": v for k, v in software_versions().items()
        }
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        self.client.log_dict(self.parent_id, spec, "spec.json")
        return self.parent_id

    def log_reference(self, reference: dict[str, float]) -> None:
        """The planted task's reference curve (top-k of the planted deltas), step = rank."""
        now = int(time.time() * 1000)
        self._log(
            self.parent_id,
            metrics=[
                Metric("reference_score", float(v), now, int(k)) for k, v in reference.items()
            ],
        )

    def log_base(self, base: dict[str, float]) -> None:
        """The base model's test scores (adapters off): `base_score` for the primary metric,
        `base_<metric>` for the others."""
        now = int(time.time() * 1000)
        self._log(
            self.parent_id,
            metrics=[
                Metric("base_score" if k == "score" else f"base_{k}", float(v), now, 0)
                for k, v in base.items()
            ],
        )

    def finish_study(self, summary: dict, status: str = "FINISHED") -> None:
        """The summary as an artifact, the study's wall time and the set-up its trials shared
        (no method's cost) as metrics."""
        now = int(time.time() * 1000)
        totals = [
            Metric(k, float(summary[k]), now, 0)
            for k in ("wall_seconds", "shared_setup_seconds")
            if k in summary
        ]
        self._log(self.parent_id, metrics=totals)
        self.client.log_dict(self.parent_id, summary, "study_summary.json")
        self.client.set_terminated(self.parent_id, status)

    def _child(self, key: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`rankstudy.trial_key` = '{key}' "
            f"and tags.`mlflow.parentRunId` = '{self.parent_id}'",
        )
        return runs[0].info.run_id if runs else None

    def log_trial(self, record: TrialRecord, result: TrialResult | None) -> str:
        """A child run for an ended search trial or test pass (once per key); status FAILED
        with the reason when it failed. A test pass logged later adds its test curve to its
        trial's run and marks it chosen."""
        key, error = record.key, record.failure
        run_id = self._child(key)
        new = run_id is None
        chosen = record.is_test and result is not None
        tags = {"status": "failed" if error else "chosen" if chosen else "ok"}
        if record.seed is not None:
            tags["seed"] = str(record.seed)
        if chosen:
            tags["chosen_for"] = ",".join(record.rules)
        if new:
            tags |= {
                "mlflow.parentRunId": self.parent_id,
                "rankstudy.kind": "trial",
                "rankstudy.trial_key": key,
                "arm": record.arm,
                "method": record.method,
                "rank": record.rank,
                "trial": str(record.trial),
            }
            run = self.client.create_run(
                self.experiment_id, run_name=trial_run_name(record, tags["status"]), tags=tags
            )
            run_id = run.info.run_id
            self._log(run_id, params={k: str(v) for k, v in record.params.items()})
        else:
            self.client.update_run(run_id, name=trial_run_name(record, tags["status"]))
            for k, v in tags.items():
                self.client.set_tag(run_id, k, v)
        if result is not None:  # a test pass adds its test curve and the cost it now totals
            metrics = trial_metrics(result)
            if not new:
                metrics = [m for m in metrics if m.key.startswith(("test_", "aurac", "cost"))]
            self._log(run_id, metrics=metrics)
        if error is not None:
            self.client.set_tag(run_id, "failure", error[:4000])
        self.client.set_terminated(run_id, "FAILED" if error else "FINISHED")
        return run_id

    def delete_trial(self, key: str) -> None:
        """Remove a trial's child run (MLflow keeps it, deleted, in its trash)."""
        run_id = self._child(key)
        if run_id is not None:
            self.client.delete_run(run_id)

    def log_method(self, method: str, summary: dict, figure_path: Path | None) -> None:
        """A summary run for a method: AURAC, cost, the curve as a table and a figure."""
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "rankstudy.kind": "method",
            "method": method,
            "rankstudy.trial_key": f"method/{method}",
        }
        existing = self._child(f"method/{method}")
        name = f"{method} · summary · AURAC {summary['aurac_log2']:.3f}"
        run_id = (
            existing
            or self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        )
        metrics = {
            k: v
            for k, v in summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        metrics |= {
            f"cost_{k}": v for k, v in summary["cost"].items() if isinstance(v, int | float)
        }
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
        rows += [
            Metric("test_score", float(s), now, int(r))
            for r, s in zip(summary["ranks"], summary["scores"], strict=True)
        ]
        rows += [  # extra metrics (token_nll, ...), step = rank like the score
            Metric(f"test_{m}", float(s), now, int(r))
            for m, scores in summary.get("extra_scores", {}).items()
            for r, s in zip(summary["ranks"], scores, strict=True)
        ]
        rows += [  # each seed's curve: the report draws their spread as a band
            Metric(f"test_score_seed{seed}", float(s), now, int(r))
            for seed, scores in summary["scores_by_seed"].items()
            for r, s in zip(summary["ranks"], scores, strict=True)
        ]
        self._log(run_id, metrics=rows)
        self.client.log_table(
            run_id, {"rank": summary["ranks"], "score": summary["scores"]}, "curve.json"
        )
        if figure_path is not None:
            self.client.log_artifact(run_id, str(figure_path))
        self.client.set_terminated(run_id, "FINISHED")

    def _log(self, run_id: str, metrics: list[Metric] = (), params: dict | None = None):
        params = [Param(k, v[:6000]) for k, v in (params or {}).items()]
        for i in range(0, max(len(metrics), 1), BATCH):
            self.client.log_batch(
                run_id,
                metrics=list(metrics[i : i + BATCH]),
                params=params if i == 0 else [],
                tags=[],
            )


def trial_metrics(result: TrialResult) -> list[Metric]:
    """Loss curve (step = optimizer step), validation and test scores (step = rank), cost."""
    now = int(time.time() * 1000)
    rule_of = result.inference_rule
    out = [Metric("train_loss", float(v), now, i + 1) for i, v in enumerate(result.loss_curve)]
    for rule, curve in result.validation_scores_by_rule.items():
        name = "val_score" if rule == rule_of else f"val_score_{rule}"
        out += [Metric(name, float(v), now, int(k)) for k, v in curve.items()]
    for rule, curve in result.scores_by_rule.items():
        name = "test_score" if rule == rule_of else f"test_score_{rule}"
        out += [Metric(name, float(v), now, int(k)) for k, v in curve.items()]
    for prefix, extra in (("val", result.validation_extra_scores), ("test", result.extra_scores)):
        for metric, by_rule in extra.items():
            for rule, curve in by_rule.items():
                suffix = "" if rule == rule_of else f"_{rule}"
                name = f"{prefix}_{metric}{suffix}"
                out += [Metric(name, float(v), now, int(k)) for k, v in curve.items()]
    for point in result.validation_curve:
        for k, v in point.scores.items():
            out.append(Metric(f"val_score_r{k}", float(v), now, int(point.step)))
    out.append(Metric("selection_metric", float(result.selection_metric), now, 0))
    for rule, v in result.selection_metric_by_rule.items():  # what chose it, per rule
        out.append(Metric(f"selection_metric_{rule}", float(v), now, 0))
    for k, v in result.aurac.items():
        out.append(Metric(f"aurac_{k}", float(v), now, 0))
    for k, v in result.cost.model_dump().items():
        if isinstance(v, int | float):
            out.append(Metric(f"cost_{k}", float(v), now, 0))
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
