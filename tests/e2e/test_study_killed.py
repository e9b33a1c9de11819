"""A study through kills: a trial's process killed mid-training and retried from its
checkpoint, the driver killed mid-study and resumed to the uninterrupted results, and a
trial lost by a kill and rerun."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rankstudy.core.records import RESULT_FILE, TrialResult, read_result
from studies import (
    TINY,
    TWO_ARMS,
    TWO_ARMS_TRIALS,
    mlflow_runs,
    run_study,
    scores,
    wait_for_trials,
    write_spec,
)


@pytest.mark.slow
def test_killed_trial_process_is_retried_from_its_checkpoint(tmp_path):
    steps = 100  # long enough to be killed between its first checkpoint (step 20) and its end
    spec = TINY | {
        "methods": ["matryoshka"],
        "training": TINY["training"] | {"steps": steps},
        "search": {"trials_per_arm": 1},
    }
    spec = write_spec(tmp_path, spec)
    out = tmp_path / "out"
    proc = run_study(spec, out, wait=False)
    deadline, victim = time.time() + 600, None
    while victim is None and time.time() < deadline and proc.poll() is None:
        for latest in out.glob("trials/*/*/checkpoints/latest"):
            victim = latest.parent.parent
        time.sleep(0.05)
    assert victim is not None, "no trial reached its first checkpoint"
    os.kill(int((victim / "trial.pid").read_text()), signal.SIGKILL)
    assert proc.wait(timeout=1200) == 0, (tmp_path / "out.log").read_text()[-4000:]
    result = read_result(victim / RESULT_FILE)
    assert result.resumed_from and result.steps == steps
    summary = json.loads((out / "study_summary.json").read_text())
    _, runs = mlflow_runs(summary)
    assert all(r.info.status == "FINISHED" for r in runs)
    # the retried trial ends where the same trial run without a kill ends
    whole = uninterrupted(out, victim, tmp_path / "whole")
    assert result.loss_curve == whole.loss_curve
    assert result.validation_scores == whole.validation_scores
    retried, alone = (
        load_file(d / "checkpoints" / f"step{steps}" / "adapters.safetensors")
        for d in (victim, tmp_path / "whole")
    )
    assert retried.keys() == alone.keys()
    for key, value in retried.items():
        torch.testing.assert_close(value, alone[key], rtol=0, atol=0)


def uninterrupted(study_out: Path, trial_dir: Path, out: Path) -> TrialResult:
    """The search trial in trial_dir run again in this process, start to end, from what the
    study recorded of it: the spec, the study's overrides and the trial's sampled values."""
    from rankstudy.trial.lifecycle import run_trial

    state = json.loads((study_out / "study_state.json").read_text())
    record = state["trials"][f"{trial_dir.parent.name}/{trial_dir.name}"]
    sampled = [f"{k}={json.dumps(v)}" for k, v in record["params"].items()]
    config = {"spec": state["spec"]["raw"], "arm": record["arm"], "out_dir": str(out)}
    return run_trial(
        config | {"overrides": [*state["spec"]["overrides"], *sampled], "splits": ["validation"]}
    )


@pytest.mark.slow
def test_killed_driver_resumes_to_the_uninterrupted_summary(tmp_path, two_arms_reference):
    spec = write_spec(tmp_path, TWO_ARMS)
    cut = tmp_path / "cut"
    proc = run_study(spec, cut, wait=False)
    state = cut / "study_state.json"
    wait_for_trials(proc, state, 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait(timeout=60)
    assert not (cut / "study_summary.json").exists()

    proc = run_study(spec, cut, "--resume")
    resumed = json.loads((cut / "study_summary.json").read_text())
    assert scores(resumed) == scores(two_arms_reference)
    _, runs = mlflow_runs(resumed)
    kinds = [r.data.tags.get("rankstudy.kind") for r in runs]
    assert kinds.count("study") == 1 and kinds.count("trial") == TWO_ARMS_TRIALS
    assert all(r.info.status == "FINISHED" for r in runs)
    keys = [
        r.data.tags["rankstudy.trial_key"] for r in runs if "rankstudy.trial_key" in r.data.tags
    ]
    assert len(keys) == len(set(keys))


def test_a_trial_lost_by_a_kill_and_rerun_leaves_search_and_mlflow(tmp_path):
    """Tune can lose a trial that ended just before the kill and rerun its suggestion under a
    new id: the first copy stops counting as a trial and its MLflow run is deleted."""
    from rankstudy.core.records import TrialRecord
    from rankstudy.study.driver import Study
    from rankstudy.study.tuner import drop_superseded
    from rankstudy.tracking.tracker import StudyTracker

    study = Study(str(write_spec(tmp_path)), [], str(tmp_path / "out"), resume=False)
    recorder = study.attach(StudyTracker(f"sqlite:///{tmp_path / 'm.db'}", "e"))
    recorder.tracker.start_study("s", {})
    trials = study.files.state.trials
    for key in ("lora_r1/lost", "lora_r1/kept"):
        record = TrialRecord(
            key=key,
            arm="lora_r1",
            method="lora",
            rank="1",
            trial=0,
            out_dir=f"/nowhere/{key}",
            params={},
            status="ok",
            failure=None,
            selection_metric=0.5,
        )
        recorder.tracker.log_trial(record, None)
        trials[key] = record
    drop_superseded(study.files, recorder, {"lora_r1/kept"}, study.log)
    recorder.flush()  # MLflow writes are queued to the driver's writer thread
    assert trials["lora_r1/lost"].superseded and not trials["lora_r1/kept"].superseded
    runs = recorder.tracker.client.search_runs([recorder.tracker.experiment_id])
    assert sorted(
        r.data.tags.get("rankstudy.trial_key")
        for r in runs
        if r.data.tags.get("rankstudy.kind") == "trial"
    ) == ["lora_r1/kept"]
