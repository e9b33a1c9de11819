"""What a study records. The driver's MLflow writes run in a background thread; a kill can cut
one off after the study recorded its trial. A resumed study redoes exactly those writes: no
missing run, no duplicate, and a half-written run is replaced. A failed arm leaves the others
scored. A whole study (the served one) records every arm, method and curve."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rankstudy.core.records import TrialRecord
from rankstudy.study.driver import Study
from rankstudy.study.state import STATE_FILE, StudyState, read_state
from rankstudy.study.summary import chosen_results, summarise, summary_table
from rankstudy.tracking.tracker import StudyTracker
from studies import ARMS, SERVED, TINY, mlflow_runs, write_spec


def failed_record(key: str, logged: bool) -> TrialRecord:
    return TrialRecord(
        key=key,
        arm=key.split("/")[0],
        method="lora" if key.startswith("lora") else key.split("/")[0],
        rank="1",
        trial=0,
        out_dir=f"/nowhere/{key}",
        params={"training.lr": 0.001},
        status="failed",
        failure="loss is NaN at step 3",
        selection_metric=None,
        logged=logged,
    )


def test_resume_redoes_only_the_cut_off_writes(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    uri = f"sqlite:///{out / 'mlflow.db'}"
    tracker = StudyTracker(uri, "records")
    parent = tracker.start_study("records", TINY)
    tracker.log_trial(failed_record("lora_r1/a", logged=True), None)
    half = tracker.client.create_run(  # a write cut off after create_run
        tracker.experiment_id,
        tags={
            "mlflow.parentRunId": parent,
            "rankstudy.trial_key": "lora_r2/b",
            "rankstudy.kind": "trial",
        },
    )
    state = StudyState(
        trials={
            "lora_r1/a": failed_record("lora_r1/a", logged=True),
            "lora_r2/b": failed_record("lora_r2/b", logged=False),
            "dylora/c": failed_record("dylora/c", logged=False),
        },
        parent_run_id=parent,
        tracking_uri=uri,
        experiment_id=tracker.experiment_id,
    )
    (out / STATE_FILE).write_text(state.model_dump_json())
    spec = dict(TINY, tracking={"uri": uri, "experiment": "records"})
    study = Study(str(write_spec(tmp_path, spec)), [], str(out), resume=True)
    recorder = study.attach(StudyTracker(uri, "records"))
    recorder.start("records", spec)
    recorder.relog()

    runs = MlflowClient(uri).search_runs([tracker.experiment_id], "tags.`rankstudy.kind` = 'trial'")
    keys = sorted(r.data.tags["rankstudy.trial_key"] for r in runs)
    assert keys == ["dylora/c", "lora_r1/a", "lora_r2/b"]
    assert {r.info.status for r in runs} == {"FAILED"}
    assert half.info.run_id not in {r.info.run_id for r in runs}
    assert all(r.logged for r in read_state(out / STATE_FILE).trials.values())


def test_a_failed_arm_leaves_the_other_methods_scored_and_reported(tmp_path):
    """The LoRA grid's trials succeed, every Matryoshka trial fails: the grid is scored, the
    study names what is missing (summary, table, report) instead of crashing."""
    from rankstudy.trial.lifecycle import run_trial

    spec = TINY | {
        "methods": ["lora_grid", "matryoshka"],
        "adapters": {"max_rank": 2, "train_ranks": [1, 2]},
        "training": TINY["training"] | {"steps": 10, "checkpoint_every": 10},
    }
    out = tmp_path / "out"
    study = Study(str(write_spec(tmp_path, spec)), [], str(out), resume=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = study.attach(StudyTracker(uri, "failed-arm"))
    recorder.start("failed-arm", spec)
    state = study.files.state
    for arm in ("lora_r1", "lora_r2"):
        trial_dir = out / "trials" / arm / "t0"
        config = {"spec": study.raw, "arm": arm, "out_dir": str(trial_dir)}
        run_trial(config | {"overrides": study.overrides})
        ok = failed_record(f"{arm}/t0", logged=True).model_copy(
            update={"out_dir": str(trial_dir), "failure": None, "status": "ok"}
        )
        state.trials[ok.key] = ok
        state.tests[f"{ok.key}/0"] = ok.model_copy(update={"rules": ["scaled"], "seed": 0})
    failed = failed_record("matryoshka/t0", logged=False).model_copy(update={"rank": "1-2"})
    state.trials[failed.key] = failed
    recorder.log_trial(failed, None)
    recorder.flush()

    chosen, missing = chosen_results(study.spec, study.files, study.seeds)
    assert set(chosen) == {("lora_r1", "scaled"), ("lora_r2", "scaled")}
    assert list(missing) == [("matryoshka", "scaled")]
    summary = summarise(study.spec, study.spec_path, study.files, chosen, missing, 1.0, print)
    assert list(summary.methods) == ["lora_grid"]
    why = "arm matryoshka: its only trial failed (loss is NaN at step 3)"
    assert summary.missing == {"matryoshka": why}  # the study's reason, its trial's own
    assert "matryoshka                       not scored: arm matryoshka" in summary_table(summary)
    study.record_summary(summary)
    page = Path(study.report()).read_text()
    assert f"<b>matryoshka</b>: {why}" in page  # the study's reason, as it recorded it
    assert "lora_grid" in page and 'id="rank-table"' in page


@pytest.mark.slow
def test_a_study_records_every_rank_of_the_grid_and_each_methods_curve(served_study):
    """The served study (conftest.served_study: the six arms, one trial each, seeds 0 and 1):
    the grid one method over its four arms, every trial and method run in MLflow under the
    study's run, each tested run's curve with step = rank, and the figures."""
    _, out = served_study
    summary = json.loads((out / "study_summary.json").read_text())
    assert list(summary["methods"]) == SERVED
    for m in summary["methods"].values():
        assert m["ranks"] == [1, 2, 4, 8] and len(m["scores"]) == 4
        assert 0 <= m["aurac_log2"] <= 1 and 0 <= m["aurac_linear"] <= 1
    assert summary["methods"]["lora_grid"]["trials"] == 4  # one search trial per rank
    assert summary["methods"]["matryoshka"]["trials"] == 1
    assert set(summary["reference"]) == {"1", "2", "4", "8"}
    grid, mat = summary["methods"]["lora_grid"], summary["methods"]["matryoshka"]
    # one run's training against four (12 steps: evaluating every rank is much of its cost)
    assert mat["cost"]["train_flops"] < grid["cost"]["train_flops"] / 3
    assert mat["cost"]["flops"] < grid["cost"]["flops"]
    assert mat["cost"]["device_seconds"] < grid["cost"]["device_seconds"]

    client, runs = mlflow_runs(summary)
    kinds = [r.data.tags.get("rankstudy.kind") for r in runs]
    assert kinds.count("study") == 1 and kinds.count("trial") == ARMS * 2  # a run per seed
    assert kinds.count("method") == len(SERVED)
    assert all(r.info.status == "FINISHED" for r in runs)
    parent = summary["mlflow"]["parent_run_id"]
    assert all(
        r.data.tags.get("mlflow.parentRunId") == parent for r in runs if r.info.run_id != parent
    )
    # the chosen matryoshka trial carries its test curve with step = rank
    method_run = next(
        r
        for r in runs
        if r.data.tags.get("method") == "matryoshka"
        and r.data.tags.get("rankstudy.kind") == "method"
    )
    history = client.get_metric_history(method_run.info.run_id, "test_score")
    assert sorted(m.step for m in history) == [1, 2, 4, 8]
    artifacts = {a.path for a in client.list_artifacts(method_run.info.run_id)}
    assert {"matryoshka.png", "curve.json"} <= artifacts
    assert (out / "figures" / "matryoshka.png").stat().st_size > 5000
    tested = [
        r for r in runs if r.data.tags.get("arm") == "matryoshka" and "test_score" in r.data.metrics
    ]
    assert len(tested) == 2  # seeds 0 and 1
    for run in tested:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_score"))
        assert steps == [1, 2, 4, 8]
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 12
    names = {r.info.run_name for r in runs if r.data.tags.get("rankstudy.kind") == "trial"}
    m = "matryoshka · matryoshka r1-8 · trial 0"
    assert sorted(n for n in names if n.startswith("matryoshka · ")) == [
        f"{m} · seed 0 · chosen",
        f"{m} · seed 1 · chosen",
    ]
    assert sum(n.startswith("lora_r4 · lora r4 · trial 0 · seed ") for n in names) == 2
    assert sum(n.endswith(" · seed 0 · chosen") for n in names) == ARMS
    # of Tune's own logs only its JSON results are written (MLflow holds every metric)
    tune_logs = {p.name for p in (out / "tune").rglob("*") if p.parent.parent.name == "search"}
    assert "result.json" in tune_logs
    assert "progress.csv" not in tune_logs and not any(n.startswith("events.") for n in tune_logs)
