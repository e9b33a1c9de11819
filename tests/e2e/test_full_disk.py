"""A fault of a shared machine, with real processes and a real file system: the disk under a
study fills up while it runs. The study's folder is a small tmpfs of its own (mounted in a
private mount namespace, so it vanishes with the test); once a trial has finished, another
process fills it to the last byte. The study must stop with the folder and its free space
named, its state file and finished results intact; once the filler is removed, --resume must
finish with the results of an uninterrupted run and every MLflow record once."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from rankstudy.core.records import read_result
from studies import ROOT, TWO_ARMS, TWO_ARMS_TRIALS, scores, write_spec

SCENARIO = """
import json, os, shutil, subprocess, sys, time
from pathlib import Path

root, spec, report = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
disk = root / "disk"
disk.mkdir()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(disk)], check=True)
out = disk / "out"
command = [sys.executable, "jobs/study.py", "--spec", spec, "--out", str(out), "--address", "local"]


def study(*args, log):
    with open(report / log, "w") as f:
        return subprocess.Popen(
            [*command, *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


first = study(log="first.log")
try:
    state = out / "study_state.json"
    while first.poll() is None:  # one trial finished: the others are part-way
        if state.exists() and json.loads(state.read_text()).get("trials"):
            break
        time.sleep(0.2)
    with open(disk / "filler", "wb", buffering=0) as f:  # another user's process
        for chunk in (2**20, 4096, 1):
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError:
                pass
    (report / "free").write_text(str(shutil.disk_usage(disk).free))
    (report / "first.rc").write_text(str(first.wait(timeout=600)))
finally:
    if first.poll() is None:
        os.killpg(first.pid, 9)
shutil.copy(state, report / "stopped_state.json")
skip = shutil.ignore_patterns("checkpoints*")
shutil.copytree(out / "trials", report / "stopped_trials", ignore=skip)
(disk / "filler").unlink()  # space freed
second = study("--resume", log="second.log")
(report / "second.rc").write_text(str(second.wait(timeout=900)))
shutil.copytree(out, report / "out", ignore=skip)
"""
# what a search trial's result.json holds (its test pass adds the test scores)
SEARCHED = {"validation_scores_by_rule", "selection_metric_by_rule", "hparams"}


def namespace() -> list[str]:
    """How to run a command with mounts of its own: a private mount namespace (as root), or
    a user namespace mapping this user to root in it."""
    own = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        own[1:1] = ["--user", "--map-root-user"]
    if not shutil.which("unshare"):
        pytest.skip("needs util-linux's unshare to mount a small file system")
    probe = subprocess.run([*own, "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine allows no private mount: {probe.stderr.decode()[-200:]}")
    return own


@pytest.mark.slow
def test_a_disk_filling_up_stops_the_study_and_resume_finishes_it(tmp_path, two_arms_reference):
    spec = write_spec(tmp_path, TWO_ARMS)
    report = tmp_path / "report"
    report.mkdir()
    proc = subprocess.run(
        [*namespace(), sys.executable, "-c", SCENARIO, str(tmp_path), str(spec), str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = (report / "first.log").read_text()
    out = tmp_path / "disk" / "out"  # as the study named it, inside the namespace
    assert (report / "free").read_text() == "0"
    assert (report / "first.rc").read_text() == "1", first[-3000:]
    stop = next(line for line in first.splitlines() if line.startswith("rankstudy study:"))
    assert stop.startswith("rankstudy study: the study stopped: a disk it writes is full (")
    assert f"{out} has 0 MiB free" in stop or "No space left on device" in stop, stop
    assert stop.endswith(f"--resume --out {out} (and the same --spec and --set)"), stop
    assert "Traceback" not in first.split("rankstudy study:")[-1]

    # what was recorded before the stop is whole: the state file, and each finished result
    stopped = json.loads((report / "stopped_state.json").read_text())
    assert stopped["trials"] and all(t["status"] == "ok" for t in stopped["trials"].values())
    kept = {
        key: read_result(report / "stopped_trials" / key / "result.json")
        for key in stopped["trials"]
    }

    second = (report / "second.log").read_text()
    assert (report / "second.rc").read_text() == "0", second[-3000:]
    resumed = json.loads((report / "out" / "study_summary.json").read_text())
    assert scores(resumed) == scores(two_arms_reference)
    final = json.loads((report / "out" / "study_state.json").read_text())
    for key, record in stopped["trials"].items():  # kept as they were (logged, now or then)
        assert final["trials"][key] | {"logged": True} == record | {"logged": True}
    for key, result in kept.items():  # finished before the stop: its search, as it was
        now = read_result(report / "out" / "trials" / key / "result.json")
        assert now.model_dump(include=SEARCHED) == result.model_dump(include=SEARCHED)
    live = [t for t in final["trials"].values() if not t["superseded"]]
    assert len(live) == TWO_ARMS_TRIALS and all(t["status"] == "ok" for t in live)

    client = MlflowClient(f"sqlite:///{report / 'out' / 'mlflow.db'}")
    runs = client.search_runs([resumed["mlflow"]["experiment_id"]], max_results=1000)
    kinds = [r.data.tags.get("rankstudy.kind") for r in runs]
    trials = [
        r.data.tags["rankstudy.trial_key"] for r, k in zip(runs, kinds, strict=True) if k == "trial"
    ]
    assert kinds.count("study") == 1
    assert sorted(trials) == sorted(t["key"] for t in live)  # every trial once
    assert all(r.info.status == "FINISHED" for r in runs)
