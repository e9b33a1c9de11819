"""Whole studies on a tiny planted task: through `ray job submit` on a Ray head this test
starts (and ends, by its process group), and through faults: a trial's process killed
mid-training, the driver killed mid-study and resumed."""

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from safetensors.torch import load_file

from rankstudy.records import RESULT_FILE, read_result
from studies import (
    ARMS,
    ROOT,
    TINY,
    TWO_ARMS,
    TWO_ARMS_TRIALS,
    end_group,
    mlflow_runs,
    run_study,
    scores,
    wait_for_trials,
    write_spec,
)


@pytest.mark.slow
def test_study_through_ray_job_submit(tmp_path, ray_head, tiny_reference):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    env = os.environ | {"RAY_ADDRESS": ray_head.dashboard, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        ["bash", "jobs/submit.sh", str(spec), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout + proc.stderr
    summary = json.loads((out / "study_summary.json").read_text())
    assert set(summary["methods"]) == set(TINY["methods"])
    assert scores(summary) == scores(tiny_reference)  # a job on a head: a local study's results
    for m in summary["methods"].values():
        assert m["ranks"] == [1, 2, 4, 8] and len(m["scores"]) == 4
        assert 0 <= m["aurac_log2"] <= 1 and 0 <= m["aurac_linear"] <= 1
    assert summary["methods"]["lora_grid"]["trials"] == 4 * 2
    assert summary["methods"]["matryoshka"]["trials"] == 2
    assert set(summary["reference"]) == {"1", "2", "4", "8"}
    grid, mat = summary["methods"]["lora_grid"], summary["methods"]["matryoshka"]
    assert mat["cost"]["flops"] < grid["cost"]["flops"] / 3
    assert mat["cost"]["device_seconds"] < grid["cost"]["device_seconds"]

    client, runs = mlflow_runs(summary)
    kinds = [r.data.tags.get("rankstudy.kind") for r in runs]
    assert kinds.count("study") == 1 and kinds.count("trial") == ARMS * 2
    assert kinds.count("method") == len(TINY["methods"])
    assert all(r.info.status == "FINISHED" for r in runs)
    keys = [
        r.data.tags["rankstudy.trial_key"] for r in runs if "rankstudy.trial_key" in r.data.tags
    ]
    assert len(keys) == len(set(keys))
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
    assert len(tested) == 1
    steps = sorted(m.step for m in client.get_metric_history(tested[0].info.run_id, "test_score"))
    assert steps == [1, 2, 4, 8]
    assert len(client.get_metric_history(tested[0].info.run_id, "train_loss")) == 60
    # the run table reads without configuring columns: arm, method and rank, trial, status
    names = {r.info.run_name for r in runs if r.data.tags.get("rankstudy.kind") == "trial"}
    m = "matryoshka · matryoshka r1-8"
    mat_names = sorted(n for n in names if n.startswith("matryoshka · "))
    assert mat_names in (
        [f"{m} · trial 0 · ok", f"{m} · trial 1 · seed 0 · chosen"],
        [f"{m} · trial 0 · seed 0 · chosen", f"{m} · trial 1 · ok"],
    )
    assert sum(n.startswith("lora_r4 · lora r4 · trial ") for n in names) == 2
    assert sum(n.endswith(" · seed 0 · chosen") for n in names) == ARMS
    # one progress line per ended trial, counting up to the exact total with nothing left
    state = json.loads((out / "study_state.json").read_text())
    tests = len(state["tests"])
    progress = re.findall(
        r"\] (\d+) done \(search (\d+)/12, test passes (\d+)/(<=)?(\d+)\)", proc.stdout
    )
    assert [int(p[0]) for p in progress] == list(range(1, 12 + tests + 1))
    assert progress[-1][1:] == ("12", str(tests), "", str(tests))
    assert f"test passes {tests}/{tests}), 0 left" in proc.stdout
    # the study built its report at its end, said where, and logged it to its parent run
    assert f"report: {out / 'report' / 'report.html'}" in proc.stdout
    # and where to see the runs: MLflow's runs page, not its GenAI overview
    runs_page = f"http://127.0.0.1:5000/#/experiments/{summary['mlflow']['experiment_id']}/runs"
    assert runs_page in proc.stdout
    experiment = client.get_experiment(summary["mlflow"]["experiment_id"])
    assert experiment.artifact_location == (out / "mlartifacts").as_uri()  # not the job's copy
    report = {a.path for a in client.list_artifacts(parent, "report")}
    assert report == {"report/report.html", "report/figures"}


@pytest.mark.slow
def test_killed_trial_process_is_retried_from_its_checkpoint(tmp_path):
    steps = 200  # long enough to be killed between its first checkpoint and its end
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
    assert result.wire()["loss_curve"] == whole["loss_curve"]
    assert result.wire()["validation_scores"] == whole["validation_scores"]
    retried, alone = (
        load_file(d / "checkpoints" / f"step{steps}" / "adapters.safetensors")
        for d in (victim, tmp_path / "whole")
    )
    assert retried.keys() == alone.keys()
    for key, value in retried.items():
        torch.testing.assert_close(value, alone[key], rtol=0, atol=0)


def uninterrupted(study_out: Path, trial_dir: Path, out: Path) -> dict:
    """The search trial in trial_dir run again in this process, start to end, from what the
    study recorded of it: the spec, the study's overrides and the trial's sampled values."""
    from rankstudy.trial import run_trial

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


def test_resume_and_fresh_start_protect_what_is_recorded(tmp_path):
    spec = write_spec(tmp_path)
    cmd = [sys.executable, "jobs/study.py", "--spec", str(spec), "--out", str(tmp_path / "o")]
    proc = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--resume: " in proc.stderr
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "study_state.json").write_text("{}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "already holds a study" in proc.stderr
    assert (tmp_path / "o" / "study_state.json").read_text() == "{}"


@pytest.mark.slow
def test_multi_worker_trials_and_seed_repeats(tmp_path):
    """Trials of two Ray Train workers each, launched from the Tune function, and a chosen
    trial repeated at a second seed: the summary gives the mean and the spread."""
    spec = TINY | {
        "name": "tiny-w2",
        "task": TINY["task"] | {"train_size": 256},
        "training": TINY["training"] | {"steps": 10, "micro_batch_size": 8},
        "resources": {"workers": 2},
        "methods": ["matryoshka"],
        "search": {"trials_per_arm": 1},
        "seeds": [0, 1],
    }
    run_study(write_spec(tmp_path, spec), tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "study_summary.json").read_text())
    m = summary["methods"]["matryoshka"]
    assert summary["seeds"] == [0, 1] and set(m["scores_by_seed"]) == {"0", "1"}
    per_seed = [m["scores_by_seed"][s] for s in ("0", "1")]
    assert m["scores"] == pytest.approx([(a + b) / 2 for a, b in zip(*per_seed, strict=True)])
    # ranks 1, 2, 4, 8 sit at log2 = 0, 1, 2, 3: each seed's AURAC is its mean trapezoid
    per_seed_aurac = [sum((a + b) / 2 for a, b in itertools.pairwise(c)) / 3 for c in per_seed]
    assert m["aurac_log2"] == pytest.approx(sum(per_seed_aurac) / 2)
    assert m["aurac_log2_std"] == pytest.approx(abs(per_seed_aurac[0] - per_seed_aurac[1]) / 2)
    assert m["cost"]["trials"] == 2
    results = [read_result(p) for p in (tmp_path / "out").glob(f"trials/*/*/{RESULT_FILE}")]
    assert {r.cost.devices for r in results} == {2}
    assert {r.seed for r in results} == {0, 1}


def test_a_trial_lost_by_a_kill_and_rerun_leaves_search_and_mlflow(tmp_path):
    """Tune can lose a trial that ended just before the kill and rerun its suggestion under a
    new id: the first copy stops counting as a trial and its MLflow run is deleted."""
    from rankstudy.records import TrialRecord
    from rankstudy.study import Study
    from rankstudy.study_tuner import drop_superseded
    from rankstudy.tracking import StudyTracker

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


@pytest.mark.slow
def test_interrupted_driver_stops_cleanly_and_resumes(tmp_path):
    """Ctrl-C (SIGINT) to the driver: Tune stops its trials, the study exits 130 naming the
    --resume command (not a traceback about an unfinished trial's result), its parent run is
    KILLED, and --resume finishes every arm's trials."""
    spec = write_spec(tmp_path, TWO_ARMS)
    cut = tmp_path / "cut"
    proc = run_study(spec, cut, wait=False)
    state = cut / "study_state.json"
    wait_for_trials(proc, state, 2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    log = (tmp_path / "cut.log").read_text()
    assert "rankstudy study: study interrupted" in log and "--resume --out" in log
    assert "No such file or directory:" not in log  # the unfinished trial's result.json
    parent = json.loads(state.read_text())["parent_run_id"]
    client = MlflowClient(f"sqlite:///{cut / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "KILLED"

    run_study(spec, cut, "--resume")
    resumed = json.loads((cut / "study_summary.json").read_text())
    _, runs = mlflow_runs(resumed)
    kinds = [r.data.tags.get("rankstudy.kind") for r in runs]
    assert kinds.count("trial") == TWO_ARMS_TRIALS and not resumed["missing"]
    # the resumed searcher went on in each arm's Optuna study: one each, every trial told once
    storage = f"sqlite:///{cut / 'optuna.db'}"
    arms = {t["arm"] for t in json.loads(state.read_text())["trials"].values()}
    assert set(optuna.get_all_study_names(storage)) == {f"tiny-two-arms/{a}/seed0" for a in arms}
    for arm in arms:
        study = optuna.load_study(study_name=f"tiny-two-arms/{arm}/seed0", storage=storage)
        assert (
            len(study.get_trials(states=(TrialState.COMPLETE,))) == TINY["search"]["trials_per_arm"]
        )


def ray_processes_of(pid: int) -> list[str]:
    """Command lines of the processes of the Ray that process `pid` started: its session
    folder (/tmp/ray/session_<time>_<pid>) is in every one's arguments."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if re.search(rf"session_[0-9_-]+_{pid}\b", args):
                found.append(args[:200])
    return found


@pytest.mark.slow
def test_sigterm_stops_the_study_and_leaves_no_process_behind(tmp_path):
    """SIGTERM (`ray job stop`, a scheduler) to a driver that started its own Ray: it stops
    as Ctrl-C does, and its Ray (GCS, raylet, workers) ends with it."""
    spec = write_spec(tmp_path)
    cut = tmp_path / "cut"
    proc = run_study(spec, cut, wait=False)
    wait_for_trials(proc, cut / "study_state.json", 1)
    assert ray_processes_of(proc.pid), "the study's own Ray was not found"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 130
    log = (tmp_path / "cut.log").read_text()
    assert "rankstudy study: study interrupted" in log and "--resume --out" in log
    parent = json.loads((cut / "study_state.json").read_text())["parent_run_id"]
    assert MlflowClient(f"sqlite:///{cut / 'mlflow.db'}").get_run(parent).info.status == "KILLED"
    deadline = time.time() + 60  # Ray's processes exit on their own once told
    while ray_processes_of(proc.pid) and time.time() < deadline:
        time.sleep(1)
    assert ray_processes_of(proc.pid) == []


HOLD_A_CPU = """
import sys, time, ray
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=1)
class Hold:
    def ready(self):
        return True
h = Hold.remote()
ray.get(h.ready.remote())
print("holding", flush=True)
time.sleep(3600)
"""


@pytest.mark.slow
def test_trials_waiting_for_resources_say_so_and_give_up(tmp_path, ray_head):
    """Another job holds one of the head's 2 CPUs; every trial needs 2. The study may not
    refuse (the CPUs exist), so it waits, says so, and gives up after wait_timeout_s."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    blocker = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_CPU, ray_head.gcs],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert blocker.stdout.readline().strip() == "holding"
        spec = TINY | {"resources": {"cpus_per_worker": 2, "wait_timeout_s": 20}}
        out = tmp_path / "out"
        cmd = [sys.executable, "jobs/study.py", "--spec", str(write_spec(tmp_path, spec))]
        proc = subprocess.run(
            [*cmd, "--out", str(out), "--address", ray_head.gcs],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,  # a guard against the hang this checks for
        )
    finally:
        end_group(blocker)
    assert proc.returncode == 130, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "waiting for resources: " in proc.stdout
    assert "need {'CPU': 2} each; free now: CPU 1 of 2; waited 10 s of 20 s" in proc.stdout
    assert "resources.wait_timeout_s: trials waited 20 s for {'CPU': 2} each" in proc.stderr
    assert f"--resume --out {out}" in proc.stderr
    assert json.loads((out / "study_state.json").read_text())["trials"] == {}
