"""The GPU path, checked without a GPU: the paper-setting spec (and its ZeRO-3, eight-GPU
variant) turns into the DeepSpeed config and the Ray resources a GPU cluster needs. The CPU
path is the same functions with the switch off."""

import pytest
import ray

from rankstudy.core.spec import load_spec
from rankstudy.model.engine import deepspeed_config
from rankstudy.study import tuner as study_tuner
from rankstudy.study.driver import Study
from rankstudy.trial.ray_train import scaling_config
from rankstudy.trial.trainable import trial_resources
from studies import ROOT

PAPER = ROOT / "jobs" / "specs" / "gsm8k-llama-3.2-1b.yaml"
ZERO3 = [
    "deepspeed.zero_stage=3",
    "deepspeed.offload_optimizer=true",
    "resources.workers=8",
]


def test_paper_setting_one_gpu_zero2_bf16():
    spec = load_spec(PAPER)
    config = deepspeed_config(spec, world_size=1, gpu=True)
    assert config["bf16"] == {"enabled": True}
    assert config["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": True,
        "contiguous_gradients": True,
    }
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 4
    assert config["train_batch_size"] == 32
    assert trial_resources(spec) == {"CPU": 4, "GPU": 1}
    scaling = scaling_config(spec)
    assert scaling.num_workers == 1 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 4, "GPU": 1}


def test_eight_gpus_zero3_with_offload():
    spec = load_spec(PAPER, ZERO3)
    config = deepspeed_config(spec, world_size=8, gpu=True)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["train_batch_size"] == 8 * 4 * 8
    # the Tune function only drives the TorchTrainer; its eight workers hold the GPUs
    assert trial_resources(spec) == {"CPU": 1}
    scaling = scaling_config(spec)
    assert scaling.num_workers == 8 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 4, "GPU": 1}


def test_cpu_switch_keeps_the_same_config_with_fp32():
    spec = load_spec(ROOT / "jobs" / "specs" / "planted-cpu.yaml")
    config = deepspeed_config(spec, world_size=2, gpu=False)
    assert config["bf16"] == {"enabled": False}
    assert config["zero_optimization"].get("overlap_comm") in (None, False)
    assert not scaling_config(spec).use_gpu


@pytest.mark.parametrize(
    ("overrides", "cluster", "slots"),
    [
        ([], {"CPU": 64, "GPU": 8}, 8),  # one GPU per trial
        (ZERO3, {"CPU": 96, "GPU": 16}, 2),  # eight GPUs per trial
        (ZERO3, {"CPU": 96, "GPU": 4}, 1),  # too few GPUs now: one trial waits for autoscaling
    ],
)
def test_concurrent_trials_follow_the_gpus(tmp_path, monkeypatch, overrides, cluster, slots):
    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    study = Study(str(PAPER), overrides, str(tmp_path / "o"), resume=False)
    assert study_tuner.slots(study.spec) == slots
    assert study_tuner.max_concurrent(study.spec) == (
        slots if "resources.workers=8" in overrides else None
    )


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_its_code_on_this_cpu(tmp_path):
    """benchmarks/gpu_check.py is what a lent GPU machine runs; --small runs the same code here
    so that it cannot rot between GPU sessions."""
    import json
    import subprocess
    import sys

    figures = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--small", "--steps", "2", "--json", figures],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiny trial (planted, matryoshka, cpu, ZeRO-2, fp32): AURAC log2" in proc.stdout
    out = json.loads(figures.read_text())
    assert [r["arm"] for r in out["throughput"]] == ["lora_r64", "matryoshka"]
    assert all(r["tokens_per_s"] > 0 and r["tflops_per_s"] > 0 for r in out["throughput"])
    assert out["tiny_trial"]["train_tokens"] == 30 * 32 * 32  # steps x micro-batch x seq_len


def v100(monkeypatch):
    """This process sees one V100 (compute capability 7.0: no bf16); this machine has none."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a: False)


def test_auto_precision_is_fp32_on_a_gpu_without_bf16(monkeypatch):
    from rankstudy.model.engine import precision

    spec = load_spec(PAPER, ["deepspeed.precision=auto"])
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a: True)
    assert precision(spec, gpu=True) == "bf16"
    v100(monkeypatch)
    assert precision(spec, gpu=True) == "fp32"
    assert precision(spec, gpu=False) == "fp32"


def test_a_trial_on_a_node_whose_gpu_lacks_bf16_fails_once_naming_the_field(tmp_path, monkeypatch):
    """The driver of a GPU cluster may have no GPU to judge: each trial judges its node's."""
    from rankstudy.trial.failures import failure_reason, retry_can_fix
    from rankstudy.trial.lifecycle import TrialFailed, run_trial
    from studies import SMALL

    v100(monkeypatch)
    config = {"spec": SMALL, "arm": "lora_r2", "out_dir": str(tmp_path / "t")}
    overrides = ["resources.use_gpu=true", "deepspeed.precision=bf16"]
    with pytest.raises(TrialFailed) as failed:
        run_trial(config | {"overrides": overrides})
    assert str(failed.value).startswith(
        "deepspeed.precision: bf16 needs a GPU that computes in bf16 (compute capability 8.0 "
        "or later); this machine's Tesla V100-SXM2-16GB is compute capability 7.0"
    )
    assert not retry_can_fix(failed.value)  # deterministic: not retried
    assert failure_reason(failed.value) == str(failed.value)
