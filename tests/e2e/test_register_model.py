"""`rankstudy export --register`: a study's chosen adapter logged as an MLflow model and
registered as a version in a real sqlite store, carrying the study's figures, and loaded back by
`models:/NAME/VERSION` to generate the tokens the exported PEFT folder generates; a store that
cannot hold a registry is refused with the option named, before any model is loaded."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rankstudy.core.spec import SpecError, load_spec
from rankstudy.core.summaries import read_study_summary
from rankstudy.model.build import load_model
from rankstudy.study.export import read_study, study_spec
from rankstudy.study.preflight import check_tracking
from rankstudy.study.registry import RegistryError, figures, tracking_uri
from rankstudy.tracking.tracker import StudyTracker
from studies import ROOT


def register(study: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rankstudy.commands.cli", "export", "--study", str(study), "--out"]
    return subprocess.run(
        [*cmd, str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def study_with_store(served: Path, folder: Path, uri: str) -> Path:
    """The served study (only read: other tests share it) as seen from `folder`: its state and
    summary, the summary's MLflow records at `uri`: a sqlite store, in which the study's own
    tracker makes its parent run, or a file store, which MLflow 3 no longer makes."""
    folder.mkdir()
    shutil.copy(served / "study_state.json", folder)
    summary = json.loads((served / "study_summary.json").read_text())
    summary["mlflow"]["tracking_uri"] = uri
    if uri.startswith("sqlite:"):
        tracker = StudyTracker(uri, summary["study"])
        parent = tracker.start_study(summary["study"], {})
        summary["mlflow"] |= {"experiment_id": tracker.experiment_id, "parent_run_id": parent}
    (folder / "study_summary.json").write_text(json.dumps(summary))
    return folder


@pytest.mark.slow
def test_a_registered_version_generates_the_exported_folder_tokens(served_study, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient
    from peft import PeftModel

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = study_with_store(served_study[1], tmp_path / "study", uri)
    done = register(
        study, tmp_path / "m4", "--method", "matryoshka", "--rank", "4", "--register", "tiny-m"
    )
    assert done.returncode == 0, done.stderr
    assert "registered models:/tiny-m/1" in done.stdout

    summary = json.loads((study / "study_summary.json").read_text())
    m = summary["methods"]["matryoshka"]
    client = MlflowClient(uri)
    version = client.get_model_version("tiny-m", "1")
    tags = version.tags
    assert (tags["method"], tags["rank"], tags["seed"]) == ("matryoshka", "4", "0")
    assert tags["inference_rule"] == m["inference_rule"] == "scaled"
    assert float(tags["aurac_log2"]) == m["aurac_log2"]
    assert float(tags["test_score"]) == m["scores_by_seed"]["0"][m["ranks"].index(4)]
    assert float(tags["test_score_mean"]) == m["scores"][m["ranks"].index(4)]
    assert float(tags["cost_flops"]) == m["cost"]["flops"] > 0
    assert float(tags["cost_device_seconds"]) == m["cost"]["device_seconds"] > 0
    assert tags["base_model"].startswith("tiny {") and '"hidden":64' in tags["base_model"]
    run = client.get_run(version.run_id)  # a child of the study's run, which the report skips
    assert run.data.tags["mlflow.parentRunId"] == summary["mlflow"]["parent_run_id"]
    assert run.data.tags["rankstudy.kind"] == "model"

    spec = study_spec(read_study(study))
    prompts = [[5, 17, 200, 3], [9, 9, 41]]
    with tracking_uri(uri):
        loaded = mlflow.pyfunc.load_model("models:/tiny-m/1", model_config={"max_new_tokens": 8})
    served = loaded.predict(prompts)
    peft = PeftModel.from_pretrained(load_model(spec.model, torch.float32).model, tmp_path / "m4")
    with torch.no_grad():
        for prompt, tokens in zip(prompts, served, strict=True):
            ids = torch.tensor([prompt])
            mask = torch.ones_like(ids)
            out = peft.eval().generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False
            )
            assert tokens == out[0, len(prompt) :].tolist() and len(tokens) == 8


@pytest.mark.slow
def test_registration_refused_before_any_model_loads(served_study, tmp_path):
    study = study_with_store(served_study[1], tmp_path / "file", f"file://{tmp_path / 'mlruns'}")
    x = tmp_path / "x"
    done = register(study, x, "--method", "dylora", "--rank", "4", "--register", "n")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--register: the MLflow store file://" in done.stderr
    assert "database-backed" in done.stderr and not x.exists()
    done = register(study, x, "--method", "dylora", "--ranks", "all", "--register", "n")
    assert done.returncode == 2 and "--register: registers one rank" in done.stderr
    summary = read_study_summary(served_study[1])
    with pytest.raises(RegistryError, match="scored lora_svd at ranks \\[1, 2, 4, 8\\], not 3"):
        figures(summary, "lora_svd", 3, None)
    with pytest.raises(RegistryError, match="no method 'lora_r4'.*--method lora_grid --rank"):
        figures(summary, "lora_r4", 4, None)
    with pytest.raises(RegistryError, match="--seed: the study ran seeds \\[0, 1\\], not 5"):
        figures(summary, "dylora", 4, 5)
    spec = load_spec(
        served_study[0], ["tracking.register_as=n", f"tracking.uri=file://{tmp_path}/mlruns"]
    )
    with pytest.raises(SpecError, match="^tracking.register_as: the MLflow store file://"):
        check_tracking(spec, tmp_path)
