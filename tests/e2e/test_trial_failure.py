"""Where the reason a trial failed is kept: in failure.json (versioned, in place of result.json)
for `rankstudy trial`; inside a study, in the trial folder's failure.json, the study's state,
its MLflow run and the report."""

import json
import subprocess
import sys

import pytest
import yaml

from rankstudy.core.records import FAILURE_FILE, read_failure
from studies import ROOT, SMALL, TINY, mlflow_runs, run_study, write_spec

# an adapter scale of 1e30 overflows float32 once B moves off zero: the first step diverges
DIVERGES = {
    "adapters": SMALL["adapters"] | {"alpha": 1e30},
    "training": SMALL["training"]
    | {"lr": 1.0, "warmup_ratio": 0.0, "lr_schedule": "constant", "steps": 4},
}
REASON = "gradients are non-finite at step 1"


def test_the_trial_command_writes_the_reason_into_failure_json(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SMALL | DIVERGES))
    out = tmp_path / "out"
    command = ["trial", "--spec", str(spec), "--arm", "lora_r8", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "rankstudy.commands.cli", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"rankstudy trial: FAILED: {REASON}" in proc.stderr
    failure = read_failure(out, "lora_r8")
    assert failure.arm == "lora_r8" and REASON in failure.reason
    assert not (out / "result.json").exists() and json.loads((out / FAILURE_FILE).read_text())


@pytest.mark.slow
def test_a_study_keeps_the_reason_in_failure_json_its_state_and_mlflow(tmp_path):
    spec = TINY | DIVERGES | {"methods": ["matryoshka"], "search": {"trials_per_arm": 1}}
    out = tmp_path / "out"
    proc = run_study(write_spec(tmp_path, spec), out, wait=False)
    assert proc.wait(timeout=1200) == 1  # a method not scored
    assert "methods not scored: tiny-study: matryoshka" in (tmp_path / "out.log").read_text()
    (trial_dir,) = (out / "trials" / "matryoshka").iterdir()
    assert REASON in read_failure(trial_dir, "matryoshka").reason
    assert not (trial_dir / "result.json").exists()
    (record,) = json.loads((out / "study_state.json").read_text())["trials"].values()
    assert record["status"] == "failed" and REASON in record["failure"]
    summary = json.loads((out / "study_summary.json").read_text())
    _, runs = mlflow_runs(summary)
    (failed,) = [r for r in runs if r.data.tags.get("rankstudy.kind") == "trial"]
    assert failed.info.status == "FAILED" and REASON in failed.data.tags["failure"]
    page = (out / "report" / "report.html").read_text()
    assert f"arm matryoshka: its only trial failed ({REASON}" in page


@pytest.mark.slow
def test_a_failure_a_retry_cannot_fix_fails_once(tmp_path):
    """A model folder whose config reads (the checks before the study pass) but whose weights
    file is cut short: every load fails the same way, so the trial fails once, its reason and
    where it was raised kept, instead of Tune retrying it."""
    from rankstudy.model.tiny import tiny_model

    model = tmp_path / "model"
    tiny_model("llama", hidden=64, layers=2, vocab=256).save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    spec = TINY | {"model": {"name": str(model)}, "methods": ["matryoshka"]}
    out = tmp_path / "out"
    proc = run_study(
        write_spec(tmp_path, spec | {"search": {"trials_per_arm": 1}}), out, wait=False
    )
    assert proc.wait(timeout=1200) == 1
    log = (tmp_path / "out.log").read_text()
    assert "methods not scored: tiny-study: matryoshka" in log
    (record,) = json.loads((out / "study_state.json").read_text())["trials"].values()
    assert record["status"] == "failed"
    assert record["failure"].startswith("SafetensorError: Error while deserializing header")
    assert record["failure"].endswith("not retried: a retry cannot fix it")
    assert "errored" not in log  # Tune saw a trial that ended, not one to retry
