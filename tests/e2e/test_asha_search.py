"""A study searched with ASHA (search.scheduler), run as a user runs it: Ray Tune's scheduler
stops weak trials early within each arm, their compute counts in their method's cost, they
are recorded as stopped in study_state.json and MLflow; and the same study killed mid-search
and resumed with --resume chooses the same trials."""

import json
import os
import signal

import pytest

from rankstudy.core import mlflow_names as names
from rankstudy.core.records import read_result
from studies import TWO_ARMS, mlflow_runs, run_study, wait_for_trials, write_spec

ASHA = TWO_ARMS | {
    "name": "tiny-asha",
    "training": TWO_ARMS["training"]
    | {"steps": 40, "eval_every": 10, "checkpoint_every": 20, "log_every": 20},
    "search": {
        "trials_per_arm": 3,
        "space": {"training.lr": {"low": 1e-5, "high": 3e-2, "log": True}},
        "scheduler": {"kind": "asha", "grace_period": 10, "reduction_factor": 3},
    },
}


def chosen(out):
    """Each test pass's arm, chosen trial number and hyperparameters."""
    state = json.loads((out / "study_state.json").read_text())
    return sorted((t["arm"], t["trial"], json.dumps(t["params"])) for t in state["tests"].values())


@pytest.mark.slow
def test_asha_stops_trials_charges_them_and_resumes_with_the_same_choices(tmp_path):
    spec = write_spec(tmp_path, ASHA)
    run_study(spec, tmp_path / "ref")
    ref = tmp_path / "ref"
    state = json.loads((ref / "study_state.json").read_text())
    trials = state["trials"].values()
    stopped = [t for t in trials if t["status"] == "stopped"]
    assert len(trials) == 6 and stopped, [t["status"] for t in trials]
    summary = json.loads((ref / "study_summary.json").read_text())
    for t in stopped:
        result = read_result(os.path.join(t["out_dir"], "result.json"))
        assert result.status == "stopped" and result.steps == t["stopped_at"] < 40
        assert result.validation_curve[-1].step == result.steps and result.cost.flops > 0
        assert t["out_dir"] not in {u["out_dir"] for u in state["tests"].values()}
    for method in ("dylora", "matryoshka"):  # every trial's compute, stopped ones included
        folders = {t["out_dir"] for t in [*trials, *state["tests"].values()] if t["arm"] == method}
        paid = sum(read_result(os.path.join(d, "result.json")).cost.train_flops for d in folders)
        assert summary["methods"][method]["cost"]["train_flops"] == pytest.approx(paid)
        assert summary["methods"][method]["trials"] == 3
    _, runs = mlflow_runs(summary)
    tags = {r.data.tags.get(names.TRIAL_KEY_TAG): r.data.tags for r in runs}
    for t in stopped:
        assert tags[t["key"]][names.STATUS_TAG] == names.STOPPED
        assert tags[t["key"]][names.STOPPED_AT_TAG] == str(t["stopped_at"])
    assert "stopped at step" in (ref / "report" / "report.html").read_text()

    out = tmp_path / "killed"
    proc = run_study(spec, out, wait=False)
    wait_for_trials(proc, out / "study_state.json", 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-search
    proc.wait(timeout=60)
    assert len(json.loads((out / "study_state.json").read_text())["trials"]) < 6
    run_study(spec, out, "--resume")
    assert chosen(out) == chosen(ref)
