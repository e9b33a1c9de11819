"""A trial killed mid-run resumes exactly; Ray Train workers split batches without changing
the result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from studies import ROOT, SMALL

RESUMABLE = SMALL | {
    "task": SMALL["task"] | {"train_size": 1024},
    "training": SMALL["training"]
    | {
        "steps": 60,  # the kill lands just after the first checkpoint (step 10)
        "micro_batch_size": 32,
        "eval_every": 0,
        "checkpoint_every": 10,
        "log_every": 50,
    },
}


def start_trial(spec_path, out, log):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rankstudy.commands.cli",
            "trial",
            "--spec",
            str(spec_path),
            "--arm",
            "dylora",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # its own process group, so the kill takes all it started


@pytest.mark.slow
def test_killed_trial_resumes_to_the_same_adapters(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(RESUMABLE))
    with open(tmp_path / "full.log", "w") as log:
        assert start_trial(spec, tmp_path / "full", log).wait(timeout=600) == 0

    with open(tmp_path / "killed.log", "w") as log:
        proc = start_trial(spec, tmp_path / "cut", log)
        latest = tmp_path / "cut" / "checkpoints" / "latest"
        deadline = time.time() + 300
        while not latest.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # a real kill, after the first checkpoint
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "result.json").exists()
    cut_at = int(latest.read_text().strip().removeprefix("step"))
    assert 10 <= cut_at < 60

    with open(tmp_path / "resumed.log", "w") as log:
        assert start_trial(spec, tmp_path / "cut", log).wait(timeout=600) == 0
    assert f"resumed from step {cut_at}" in (tmp_path / "resumed.log").read_text()
    full = load_file(tmp_path / "full/checkpoints/step60/adapters.safetensors")
    resumed = load_file(tmp_path / "cut/checkpoints/step60/adapters.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    a = json.loads((tmp_path / "full/result.json").read_text())
    b = json.loads((tmp_path / "cut/result.json").read_text())
    assert a["loss_curve"] == b["loss_curve"] and a["scores"] == b["scores"]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray instance owned by this test process (ray.shutdown ends exactly it)."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_ray_train_workers_match_one_worker(tmp_path, local_ray):
    from rankstudy.core.records import TrialConfig
    from rankstudy.trial.ray_train import fit_trial

    def run(workers, accum):
        overrides = [
            "training.steps=20",
            "training.micro_batch_size=16",
            f"training.grad_accum={accum}",
            f"resources.workers={workers}",
            "deepspeed.zero_stage=2",
            "training.checkpoint_every=0",
        ]
        config = {
            "spec": SMALL,
            "arm": "dylora",
            "out_dir": str(tmp_path / f"w{workers}"),
            "overrides": overrides,
        }
        return fit_trial(TrialConfig.of(config), str(tmp_path / "ray"), f"w{workers}")

    two = run(workers=2, accum=1)  # global batch 32 = 2 workers x 16
    one = run(workers=1, accum=2)  # global batch 32 = 2 micro-batches x 16
    assert two.cost.devices == 2 and one.cost.devices == 1
    assert two.cost.train_tokens == one.cost.train_tokens == 20 * 32 * 16
    torch.testing.assert_close(
        torch.tensor(two.loss_curve), torch.tensor(one.loss_curve), rtol=0, atol=2e-4
    )
    for k, v in one.scores.items():
        assert two.scores[k] == pytest.approx(v, abs=0.01)
