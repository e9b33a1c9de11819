"""The MLflow server going away mid-study, with a real `mlflow server` process: a short outage
is ridden out (MLflow's client retries each request) and loses no record; a long one stops the
study with a message saying how to finish it, and --resume writes every record it missed."""

import json
import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from studies import (
    TWO_ARMS,
    TWO_ARMS_TRIALS,
    free_port,
    mlflow_service,
    run_study,
    wait_for_trials,
    write_spec,
)


def served_study(tmp_path, uri):
    return write_spec(tmp_path, TWO_ARMS | {"tracking": {"uri": uri, "experiment": "outage"}})


def assert_every_record_in_mlflow(uri, out):
    """One run per search trial, each chosen one tested; every run ended; no key twice."""
    state = json.loads((out / "study_state.json").read_text())
    client = MlflowClient(uri)
    runs = client.search_runs([state["experiment_id"]], max_results=1000)
    keys = [r.data.tags.get("rankstudy.trial_key") for r in runs]
    trials = [r for r in runs if r.data.tags.get("rankstudy.kind") == "trial"]
    assert sorted(r.data.tags["rankstudy.trial_key"] for r in trials) == sorted(state["trials"])
    assert len(trials) == TWO_ARMS_TRIALS and len(keys) == len(set(keys))
    chosen = {r.data.tags["rankstudy.trial_key"] for r in trials if "test_score" in r.data.metrics}
    assert chosen == {t["key"] for t in state["tests"].values()}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(t["logged"] for t in [*state["trials"].values(), *state["tests"].values()])


@pytest.mark.slow
def test_a_server_restarted_mid_study_loses_no_record(tmp_path, monkeypatch):
    # MLflow's client retries 7 times, waiting 2, 4 ... 64 s (two minutes in all) rather than
    # its default 4 ... 120 s (four): the write the outage met goes through soon after the
    # server is back
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    with mlflow_service(port, tmp_path) as server:
        proc = run_study(served_study(tmp_path, uri), out, wait=False)
        wait_for_trials(proc, out / "study_state.json", 2)
        os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, at once
        server.wait()
        wait_for_trials(proc, out / "study_state.json", 3)  # trials go on meanwhile
        # a write met the outage: a trial recorded while the server is down waits unlogged
        during = json.loads((out / "study_state.json").read_text())["trials"]
        assert not all(t["logged"] for t in during.values()), during
    with mlflow_service(port, tmp_path, "the MLflow server again"):
        assert proc.wait(timeout=1200) == 0, (tmp_path / "out.log").read_text()[-4000:]
        assert_every_record_in_mlflow(uri, out)  # that write, retried, went through
    log = (tmp_path / "out.log").read_text()
    # The writes the outage met went through by the client's own retries. Only a request the
    # kill cut off mid-response is not retried (MLflow retries no broken read of a POST): the
    # study then wrote what it missed itself once the server answered, before its end.
    if "failed a write" in log:
        assert "Connection broken" in log.split("failed a write", 1)[1].split("\n")[0], log
        assert f"MLflow at {uri}: writing the records it missed" in log


@pytest.mark.slow
def test_a_server_down_to_the_end_stops_the_study_and_resume_writes_what_it_missed(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no minutes of backoff here
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    spec = served_study(tmp_path, uri)
    with mlflow_service(port, tmp_path) as server:
        proc = run_study(spec, out, wait=False)
        wait_for_trials(proc, out / "study_state.json", 2)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        assert proc.wait(timeout=1200) == 1
    log = (tmp_path / "out.log").read_text()
    assert f"MLflow at {uri} failed a write" in log and "the study goes on" in log
    assert f"rankstudy study: tracking.uri: MLflow at {uri} did not take the study's" in log
    assert f"--resume --out {out}" in log
    state = json.loads((out / "study_state.json").read_text())
    assert len(state["trials"]) == TWO_ARMS_TRIALS  # every trial ran and is recorded
    assert not all(t["logged"] for t in state["trials"].values())

    with mlflow_service(port, tmp_path, "the MLflow server again"):
        run_study(spec, out, "--resume")
        assert_every_record_in_mlflow(uri, out)
        summary = json.loads((out / "study_summary.json").read_text())
        assert set(summary["methods"]) == set(TWO_ARMS["methods"]) and not summary["missing"]


def test_a_server_that_is_not_there_is_named_before_any_trial(tmp_path):
    """Refused as the plan refuses it (rankstudy.study.preflight), before Ray starts."""
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    spec = served_study(tmp_path, uri)
    proc = run_study(spec, out, wait=False)
    assert proc.wait(timeout=300) == 2
    log = (tmp_path / "out.log").read_text()
    refusal = f"invalid input\ntracking.uri: nothing answers at {uri} (the MLflow server)"
    assert f"rankstudy study: {refusal}" in log
    assert "Started a local Ray instance" not in log  # asked before Ray's start-up is spent
    assert not (out / "trials").exists()
    plan = subprocess.run(
        [sys.executable, "-m", "rankstudy.commands.cli", "plan", "--spec", str(spec)],
        capture_output=True,
        text=True,
    )
    assert plan.returncode == 2 and f"rankstudy plan: {refusal}" in plan.stderr
