"""A study stopped on purpose: Ctrl-C and SIGTERM end it cleanly, leave no process, and
--resume finishes it; --resume and a fresh start never overwrite what is recorded."""

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from studies import (
    ROOT,
    TINY,
    TWO_ARMS,
    TWO_ARMS_TRIALS,
    mlflow_runs,
    run_study,
    wait_for_trials,
    write_spec,
)


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
    spec = write_spec(tmp_path, TWO_ARMS)
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
