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
    ARMS,
    ROOT,
    TINY,
    end_group,
    mlflow_runs,
    scores,
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
