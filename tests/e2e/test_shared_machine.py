"""Faults of a shared machine, with real processes: two drivers on one --out. One runs, the
other is refused at once naming the folder; the folder is free again once its driver ends,
however it ends. Two studies at once into one new MLflow store both keep every record."""

import json
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from rankstudy.study.state import LOCK_FILE, StudyError, hold_folder
from studies import ROOT, TINY, run_study, write_spec

HOLD = """
import sys, time
from pathlib import Path
from rankstudy.study.state import hold_folder
held = hold_folder(Path(sys.argv[1]))
print("held", flush=True)
if sys.argv[2] == "sleep":
    time.sleep(600)
"""


def holder(folder, then: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), then],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_and_free_again_after_a_crash_or_an_exit(tmp_path):
    out = tmp_path / "out"
    crashed = holder(out, "sleep")
    with pytest.raises(StudyError) as refused:
        hold_folder(out)
    assert str(refused.value).startswith(
        f"--out: {out} is in use by another study driver (pid {crashed.pid}); wait for it"
    )
    crashed.send_signal(signal.SIGKILL)
    crashed.wait(timeout=30)
    hold_folder(out).close()  # a crash leaves no lock behind
    exited = holder(out, "exit")
    exited.wait(timeout=30)
    hold_folder(out).close()  # nor does an exit


@pytest.mark.slow
def test_two_studies_at_once_share_a_new_store_and_a_driver_on_a_held_out_is_refused(
    tmp_path, monkeypatch
):
    """One MLFLOW_TRACKING_URI exported for two different studies started together: both
    create the store at once, both finish, and each has its runs in it once. A third driver
    started on the first one's --out once the first holds it is refused at once, naming the
    folder."""
    store = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    spec = TINY | {"methods": ["matryoshka"], "search": {"trials_per_arm": 1}}
    spec["training"] = TINY["training"] | {"steps": 20}
    studies, paths = {}, {}
    for name in ("first", "second"):
        paths[name] = write_spec(tmp_path, spec | {"name": name}, f"{name}.yaml")
        studies[name] = run_study(paths[name], tmp_path / name, wait=False)
    out, first = tmp_path / "first", studies["first"]
    lock, deadline = out / LOCK_FILE, time.time() + 300
    while time.time() < deadline and first.poll() is None:  # until the first holds its --out
        if lock.exists() and lock.read_text().strip() == str(first.pid):
            break
        time.sleep(0.1)
    refused = subprocess.run(
        [sys.executable, "jobs/study.py", "--spec", str(paths["first"]), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for name, proc in studies.items():
        assert proc.wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    assert refused.returncode == 2, refused.stderr[-3000:]
    # refused at once: by the lock, or, once the first saved its state, as a folder in use
    assert (
        f"--out: {out} is in use by another study driver (pid {first.pid})" in refused.stderr
        or f"--out: {out} already holds a study" in refused.stderr
    )
    state = json.loads((out / "study_state.json").read_text())
    assert len(state["trials"]) == 1 and all(t["status"] == "ok" for t in state["trials"].values())
    assert json.loads((out / "study_summary.json").read_text())["methods"]["matryoshka"]
    client = MlflowClient(store)
    for name in studies:
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        kinds = sorted(r.data.tags["rankstudy.kind"] for r in runs)
        assert kinds == ["method", "study", "trial"], kinds
        assert all(r.info.status == "FINISHED" for r in runs)
