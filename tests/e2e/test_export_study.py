"""`rankstudy export`: a study's chosen trial at a rank, as a standard PEFT adapter that
reproduces the study's own model at that rank; requests the study cannot serve are refused
with the option named, before any model is loaded."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rankstudy.adapters import load_adapters, set_rank
from rankstudy.core.records import RESULT_FILE, read_result
from rankstudy.model.build import load_model
from rankstudy.study.export import ExportError, plan_exports, study_spec
from rankstudy.study.state import STATE_FILE, StudyState, read_state
from rankstudy.trial.checkpoint import latest_tag
from studies import ROOT


@pytest.fixture(scope="module")
def study(served_study) -> Path:
    return served_study[1]


def export(study: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "rankstudy.commands.cli",
        "export",
        "--study",
        str(study),
        "--out",
        str(out),
    ]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def state(study: Path) -> StudyState:
    return read_state(study / STATE_FILE)


@pytest.mark.slow
def test_exported_ranks_reproduce_the_study_model(study, tmp_path):
    from peft import PeftModel

    done = export(study, tmp_path / "all", "--method", "matryoshka_truncated_p", "--ranks", "all")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "rank1",
        "rank2",
        "rank4",
        "rank8",
    ]
    done = export(study, tmp_path / "grid4", "--method", "lora_grid", "--rank", "4", "--seed", "1")
    assert done.returncode == 0, done.stderr
    # lora_svd: the grid's rank-8 run at rank 3 (a rank the study did not score: any k <= R)
    done = export(study, tmp_path / "svd3", "--method", "lora_svd", "--rank", "3")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "svd3" / "adapter_config.json").read_text())["r"] == 3

    s = state(study)
    spec = study_spec(s)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    cases = [
        (tmp_path / "all" / "rank4", "matryoshka", "truncated_p", 0, 4),
        (tmp_path / "grid4", "lora_r4", "scaled", 1, 4),
        (tmp_path / "svd3", "lora_r8", "svd", 0, 3),
    ]
    for exported, arm, rule, seed, k in cases:
        record = next(
            t for t in s.tests.values() if t.arm == arm and t.seed == seed and rule in t.rules
        )
        ckpt = Path(record.out_dir) / "checkpoints"
        ours = load_model(spec.model, torch.float32).model.eval()
        load_adapters(ours, ckpt / latest_tag(ckpt) / "adapters.safetensors")
        set_rank(ours, k, rule)
        theirs = PeftModel.from_pretrained(load_model(spec.model, torch.float32).model, exported)
        with torch.no_grad():
            torch.testing.assert_close(
                theirs.eval()(tokens).logits, ours(tokens).logits, atol=1e-5, rtol=0
            )


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,ranks,seed,message",
    [
        (
            "matryoshka",
            [3],
            None,
            "--rank: 3 is not a rank matryoshka serves: .*S = \\[1, 2, 4, 8\\]",
        ),
        ("lora_r2", [4], None, "--rank: 4 is not a rank lora_r2 serves: .*trained at rank 2"),
        ("lora_grid", [16], None, "--rank: 16 is not a rank lora_grid serves"),
        ("lora_svd", [9], None, "--rank: 9 is not a rank lora_svd serves: .*ranks 1..8"),
        ("nested_multiloss", [4], None, "--method: the study ran no method 'nested_multiloss'"),
        ("lora_r3", [3], None, "--method: the study trained no LoRA arm lora_r3"),
        ("matryoshka", [4], 7, "--seed: the study ran seeds \\[0, 1\\], not 7"),
    ],
)
def test_requests_the_study_cannot_serve_are_refused(study, method, ranks, seed, message):
    s = state(study)
    with pytest.raises(ExportError, match=message):
        plan_exports(s, study_spec(s), method, ranks, seed)


@pytest.mark.slow
def test_the_command_names_the_option_and_exits_2(study, tmp_path):
    done = export(study, tmp_path / "x", "--method", "lora_r2", "--rank", "4")
    assert done.returncode == 2 and "--rank: 4 is not a rank lora_r2 serves" in done.stderr
    assert not (tmp_path / "x").exists() and "Traceback" not in done.stderr
    done = export(tmp_path, tmp_path / "x", "--method", "matryoshka", "--rank", "4")
    assert done.returncode == 2 and "--study:" in done.stderr and "holds no study" in done.stderr


@pytest.mark.slow
def test_the_base_model_is_scored_once_and_recorded(study):
    """One test pass (the first arm's, first seed) scores the base model with its adapters
    off: on the planted task with shift 0.5 the base agrees with the teacher on about half of
    the test inputs, by construction. The summary and the parent MLflow run hold it."""
    from mlflow.tracking import MlflowClient

    summary = json.loads((study / "study_summary.json").read_text())
    base = summary["base_scores"]["score"]
    assert base == pytest.approx(0.5, abs=0.08)
    results = [read_result(p) for p in study.glob(f"trials/*/*/{RESULT_FILE}")]
    with_base = [r for r in results if r.base_scores is not None]
    assert len(with_base) == 1 and with_base[0].arm == "lora_r1" and with_base[0].seed == 0
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.data.metrics["base_score"] == pytest.approx(base)
