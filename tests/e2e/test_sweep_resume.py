"""A budget sweep run as a user runs it: two tiny budget points, the driver killed once the
second has begun, and --resume finishing it without running the first point (or any of its
trials) again, the point it cut off scoring as that point run uninterrupted; every point in one
MLflow experiment, each parent run tagged with the sweep and its budget; the report the last
point built opening with the sweep's points as the sweep summary holds them."""

import json
import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from chromium import render
from rankstudy.core import mlflow_names as names
from rankstudy.core.records import read_result
from studies import ROOT, TINY, run_study, scores, wait_for_trials, write_spec

SWEEP = TINY | {
    "name": "tiny-sweep",
    "methods": ["lora_grid", "dylora"],
    "adapters": {"max_rank": 8, "train_ranks": [2, 8]},  # arms lora_r2, lora_r8, dylora
    "training": TINY["training"] | {"steps": 20, "log_every": 10, "checkpoint_every": 10},
    "search": {"trials_per_arm": 1},
    "budgets": [0.5, 1],
}


def snapshot(folder):
    """Every result.json under a point's folder (its trials' and Tune's own): bytes and
    modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("result.json")}


@pytest.mark.slow
def test_killed_budget_sweep_resumes_without_rerunning_its_finished_point(tmp_path):
    spec, out = write_spec(tmp_path, SWEEP), tmp_path / "out"
    # the reference, run beside it: the point the kill cuts off, as a sweep of that budget
    # alone (its study, named for the sweep and the budget, is the same)
    alone = write_spec(tmp_path, SWEEP | {"budgets": [1]}, "alone.yaml")
    uninterrupted = run_study(alone, tmp_path / "ref", wait=False)
    proc = run_study(spec, out, wait=False)
    wait_for_trials(proc, out / "budget1" / "study_state.json", 1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait(timeout=60)
    first = out / "budget0.5"
    cut = json.loads((out / "sweep_summary.json").read_text())
    assert not cut["complete"] and list(cut["points"]) == ["0.5"], cut
    before = snapshot(first)
    # a trial per arm (its test pass, one seed, rewrote its result); Tune's 3 search trials
    # and 3 test passes
    assert len(list((first / "trials").rglob("result.json"))) == 3
    assert len(list((first / "tune").rglob("result.json"))) == 6
    state, summary = [(first / f).read_bytes() for f in ("study_state.json", "study_summary.json")]

    run_study(spec, out, "--resume")
    log = (tmp_path / "out.log").read_text()
    assert "[study tiny-sweep-budget0.5] finished before the resume: not run again" in log
    assert snapshot(first) == before  # no trial of the first point ran again, none was added
    assert (first / "study_state.json").read_bytes() == state
    assert (first / "study_summary.json").read_bytes() == summary
    assert "sweep tiny-sweep: AURAC log2" in log and "x0.5" in log and "x1.0" in log

    sweep = json.loads((out / "sweep_summary.json").read_text())
    assert sweep["sweep"] == "tiny-sweep" and sweep["budgets"] == [0.5, 1.0]
    assert sweep["complete"] and set(sweep["points"]) == {"0.5", "1.0"}
    for key, folder in sweep["folders"].items():
        here = out / f"budget{float(key):g}"
        assert folder == str(here.resolve())
        steps = {read_result(p).steps for p in (here / "trials").rglob("result.json")}
        assert steps == {round(20 * float(key))}  # 10 steps at x0.5, 20 at x1
        point = json.loads((here / "study_summary.json").read_text())
        assert set(sweep["points"][key]) == {"lora_grid", "dylora"}
        grid = point["methods"]["lora_grid"]
        assert list(grid["scores_by_seed"]) == ["0"]
        assert sweep["points"][key]["lora_grid"] == {
            "aurac": grid["aurac_log2"],
            "std": None,  # one seed: no spread measured
            "aurac_linear": grid["aurac_linear"],
            "flops": grid["cost"]["flops"],
            "device_seconds": grid["cost"]["device_seconds"],
            "trials": grid["trials"],
        }
    half, whole = (sweep["points"][k]["lora_grid"]["flops"] for k in ("0.5", "1.0"))
    assert half < whole  # the same evaluation, half the training

    # the point cut off and resumed scores as it does uninterrupted
    assert uninterrupted.wait(timeout=1200) == 0, (tmp_path / "ref.log").read_text()[-4000:]
    resumed, whole = (
        json.loads((run / "budget1" / "study_summary.json").read_text())
        for run in (out, tmp_path / "ref")
    )
    assert scores(resumed) == scores(whole)

    # the sweep's report (the last point's, as it built it): each point's AURAC, spread and
    # cost, read from MLflow, as the sweep summary holds them
    shown = render(out / "budget1" / "report" / "report.html", "report-real-sweep")
    assert shown.errors == [] and shown.requests == []
    rows = {(r[0], r[1]): r[2:] for r in shown.tables["sweep-points"][1:]}
    assert rows == {
        (method, f"×{float(key):.1f}"): [
            f"{p['aurac']:.3f}",
            "n/a",  # one seed
            f"{p['flops']:.3g}",
            f"{p['device_seconds']:.1f}",
        ]
        for key, methods in sweep["points"].items()
        for method, p in methods.items()
    }
    assert [r[0] for r in shown.tables["frontier-table"][1:]] == ["dylora"]  # against the grid

    points = [json.loads((out / f"budget{b}" / "study_summary.json").read_text()) for b in (0.5, 1)]
    assert {p["mlflow"]["tracking_uri"] for p in points} == {
        f"sqlite:///{(out / 'mlflow.db').resolve()}"
    }
    assert len({p["mlflow"]["experiment_id"] for p in points}) == 1
    client = MlflowClient(points[0]["mlflow"]["tracking_uri"])
    assert client.get_experiment(points[0]["mlflow"]["experiment_id"]).name == "tiny-sweep"
    studies = client.search_runs(
        [points[0]["mlflow"]["experiment_id"]], f"tags.`{names.KIND_TAG}` = '{names.STUDY}'"
    )
    assert sorted(
        (r.info.run_name, r.data.tags[names.SWEEP_TAG], r.data.tags[names.BUDGET_TAG])
        for r in studies
    ) == [
        ("tiny-sweep-budget0.5", "tiny-sweep", "0.5"),
        ("tiny-sweep-budget1", "tiny-sweep", "1.0"),
    ]
    assert {r.info.run_id for r in studies} == {p["mlflow"]["parent_run_id"] for p in points}


def test_resuming_a_sweep_that_never_began_says_so(tmp_path):
    spec, out = write_spec(tmp_path, SWEEP), tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "jobs/study.py", "--spec", str(spec), "--out", str(out), "--resume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"--resume: {out} holds no sweep to resume" in proc.stderr
