"""Whole studies on a tiny planted task through `ray job submit` on a Ray head this test
starts (and ends, by its process group), and waiting for resources another job holds (the
study of several Ray Train workers and seeds is test_study_workers.py, a file of its own so
that pytest-xdist can run it beside these)."""

import json
import os
import re
import subprocess
import sys

import pytest

from studies import (
    ROOT,
    TINY,
    TWO_ARMS,
    TWO_ARMS_TRIALS,
    end_group,
    mlflow_runs,
    scores,
    write_spec,
)


@pytest.mark.slow
def test_study_through_ray_job_submit(tmp_path, ray_head, two_arms_reference):
    """The two-arm study as a job on a head: a local study's results, every record in MLflow,
    the run names, the progress lines and the report (the LoRA grid's records are checked on the
    served study, test_study_records.py)."""
    spec = write_spec(tmp_path, TWO_ARMS)
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
    assert set(summary["methods"]) == set(TWO_ARMS["methods"])
    assert scores(summary) == scores(two_arms_reference)  # a job on a head: a local study's

    client, runs = mlflow_runs(summary)
    kinds = [r.data.tags.get("rankstudy.kind") for r in runs]
    assert kinds.count("study") == 1 and kinds.count("trial") == TWO_ARMS_TRIALS
    assert kinds.count("method") == len(TWO_ARMS["methods"])
    assert all(r.info.status == "FINISHED" for r in runs)
    keys = [
        r.data.tags["rankstudy.trial_key"] for r in runs if "rankstudy.trial_key" in r.data.tags
    ]
    assert len(keys) == len(set(keys))
    parent = summary["mlflow"]["parent_run_id"]
    assert all(
        r.data.tags.get("mlflow.parentRunId") == parent for r in runs if r.info.run_id != parent
    )
    # the run table reads without configuring columns: arm, method and rank, trial, status
    names = {r.info.run_name for r in runs if r.data.tags.get("rankstudy.kind") == "trial"}
    m = "matryoshka · matryoshka r1-8"
    mat_names = sorted(n for n in names if n.startswith("matryoshka · "))
    assert mat_names in (
        [f"{m} · trial 0 · ok", f"{m} · trial 1 · seed 0 · chosen"],
        [f"{m} · trial 0 · seed 0 · chosen", f"{m} · trial 1 · ok"],
    )
    # one progress line per ended trial, counting up to the exact total with nothing left
    state = json.loads((out / "study_state.json").read_text())
    tests = len(state["tests"])
    searched = TWO_ARMS_TRIALS
    progress = re.findall(
        rf"\] (\d+) done \(search (\d+)/{searched}, test passes (\d+)/(<=)?(\d+)\)",
        proc.stdout,
    )
    assert [int(p[0]) for p in progress] == list(range(1, searched + tests + 1))
    assert progress[-1][1:] == (str(searched), str(tests), "", str(tests))
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
        spec = TINY | {"resources": {"cpus_per_worker": 2, "wait_timeout_s": 10}}
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
    assert "need {'CPU': 2} each; free now: CPU 1 of 2; waited 5 s of 10 s" in proc.stdout
    assert "resources.wait_timeout_s: trials waited 10 s for {'CPU': 2} each" in proc.stderr
    assert f"--resume --out {out}" in proc.stderr
    assert json.loads((out / "study_state.json").read_text())["trials"] == {}
