"""Trials end to end on the planted task: every method, result.json, failure, CLI errors."""

import itertools
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from rankstudy.adapters import adapter_layers, read_adapter_metadata, set_rank
from rankstudy.core.records import TrialConfig
from rankstudy.trial.lifecycle import Trial, TrialFailed, run_trial
from studies import GSM8K_DATA, ROOT, SMALL


def trial(arm, out, overrides=(), spec=SMALL) -> dict:
    """The trial's result.json, as the JSON object it writes."""
    config = {"spec": spec, "arm": arm, "out_dir": str(out), "overrides": list(overrides)}
    return run_trial(config).wire()


def mean_trapezoid(curve: dict[str, float], axis) -> float:
    """A curve's area over its rank axis divided by the axis' span; one point: its score."""
    points = sorted((axis(int(r)), v) for r, v in curve.items())
    if len(points) == 1:
        return points[0][1]
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(points))
    return area / (points[-1][0] - points[0][0])


@pytest.mark.parametrize(
    "arm,ranks",
    [
        ("lora_r2", ["2"]),
        ("dylora", ["1", "2", "4", "8"]),
        ("matryoshka", ["1", "2", "4", "8"]),
        ("matryoshka_binary", ["1", "2", "4", "8"]),
        ("nested_multiloss", ["1", "2", "4", "8"]),
        ("nested_sampled", ["1", "2", "4", "8"]),
        ("dylora_frozen", ["1", "2", "4", "8"]),
    ],
)
def test_each_method_completes_and_writes_every_field(tmp_path, arm, ranks):
    result = trial(arm, tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for key in (
        "arm",
        "method",
        "max_rank",
        "hparams",
        "scores",
        "validation_scores",
        "aurac",
        "reference",
        "cost",
        "loss_curve",
        "validation_curve",
        "selection_metric",
    ):
        assert key in on_disk, key
    assert on_disk["arm"] == arm and list(on_disk["scores"]) == ranks
    assert list(on_disk["validation_scores"]) == ranks
    assert list(on_disk["reference"]) == ["1", "2", "4", "8"]  # the spec's evaluation ranks
    assert all(0.0 <= s <= 1.0 for s in on_disk["scores"].values())
    test = on_disk["scores"]
    assert on_disk["aurac"] == pytest.approx(
        {"log2": mean_trapezoid(test, math.log2), "linear": mean_trapezoid(test, float)}
    )
    # chosen on validation only: LoRA by its own rank's score, nested arms by their AURAC
    own = on_disk["validation_scores"]
    chosen_by = own[ranks[0]] if arm.startswith("lora") else mean_trapezoid(own, math.log2)
    assert on_disk["selection_metric"] == pytest.approx(chosen_by)
    cost = on_disk["cost"]
    assert cost["train_tokens"] == 12 * 16 * 16
    for key in ("train_seconds", "eval_seconds", "device_seconds", "flops", "peak_memory_bytes"):
        assert cost[key] > 0, key
    assert len(on_disk["loss_curve"]) == 12
    assert [v["step"] for v in on_disk["validation_curve"]] == [6]
    rules = {"scaled", "truncated_p"} if arm.startswith("matryoshka") else {"scaled"}
    assert set(on_disk["scores_by_rule"]) == rules
    adapters = tmp_path / "checkpoints" / "step12" / "adapters.safetensors"
    with safe_open(str(adapters), framework="pt") as f:
        assert any(k.endswith("lora_A") for k in f.keys())  # noqa: SIM118


def test_a_searched_scaling_reaches_p_serving_and_the_saved_adapters(tmp_path):
    """adapters.scaling set for one trial (as a search suggestion arrives, an override): the
    trained p, the scale served at rank k and the adapter file all follow it."""
    rank = Trial(
        TrialConfig.of(
            {
                "spec": SMALL,
                "arm": "matryoshka",
                "out_dir": str(tmp_path),
                "overrides": ['adapters.scaling="rank"', "training.steps=2"],
            }
        )
    )
    try:
        rank.setup()
        rank.train()
        result = rank.finish()
        model = rank.engine.module
        # p_i = sum of 1/r over r in S = {1, 2, 4, 8} with r > i
        p = [1 + 1 / 2 + 1 / 4 + 1 / 8, 1 / 2 + 1 / 4 + 1 / 8] + [1 / 4 + 1 / 8] * 2 + [1 / 8] * 4
        for layer in adapter_layers(model).values():
            assert layer.trained_p.tolist() == pytest.approx(p)
        set_rank(model, 4, "scaled")
        assert rank.schedule.terms(False) == [(4, 1 / 4, 0)]  # s_4 = 1/4 under "rank"
        set_rank(model, None)
    finally:
        rank.close()
    meta = read_adapter_metadata(tmp_path / "checkpoints" / "step2" / "adapters.safetensors")
    assert meta["scaling"] == "rank"
    assert 'adapters.scaling="rank"' in result.hparams.overrides


def test_lora_truncations_are_scored_when_asked(tmp_path):
    result = trial("lora_r4", tmp_path, ["adapters.lora_truncations=true", "training.steps=4"])
    assert list(result["scores"]) == ["1", "2", "4"]


def test_lora_grid_scores_rise_with_rank(tmp_path):
    spec = SMALL | {
        "task": SMALL["task"] | {"train_size": 1024, "planted_rank": 8},
        "training": SMALL["training"] | {"steps": 150, "eval_every": 0, "checkpoint_every": 0},
    }
    low = trial("lora_r1", tmp_path / "r1", spec=spec)["scores"]["1"]
    high = trial("lora_r8", tmp_path / "r8", spec=spec)["scores"]["8"]
    assert high > low + 0.05
    assert low > 0.55  # both learn: the base agrees with the teacher on about half


def test_divergence_stops_the_trial_with_a_reason(tmp_path):
    with pytest.raises(TrialFailed, match="gradients are non-finite at step 1"):
        # an adapter scale of 1e30 overflows float32 once B moves off zero
        trial(
            "lora_r8",
            tmp_path,
            [
                "adapters.alpha=1e30",
                "training.lr=1.0",
                "training.warmup_ratio=0",
                "training.lr_schedule=constant",
            ],
        )


def rankstudy(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "rankstudy.commands.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--arm", "lora_r64"], "arm: 'lora_r64' has rank 64 outside 1..max_rank=8"),
        (["--arm", "loraa"], "arm: unknown arm 'loraa'"),
        (["--arm", "dylora", "--set", "training.lr=-1"], "training.lr: Input should be greater"),
        (
            ["--arm", "dylora", "--set", "adapters.train_ranks=[4,2]"],
            "train_ranks: must be strictly",
        ),
        (["--arm", "dylora", "--set", "training.stepz=3"], "training.stepz: Extra inputs"),
    ],
)
def test_cli_rejects_bad_input_before_compute(tmp_path, args, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SMALL))
    proc = rankstudy("trial", "--spec", str(spec), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_runs_a_trial(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SMALL))
    proc = rankstudy(
        "trial",
        "--spec",
        str(spec),
        "--arm",
        "matryoshka",
        "--out",
        str(tmp_path / "out"),
        "--set",
        "training.steps=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[matryoshka] step 4/4 loss" in proc.stdout
    assert json.loads((tmp_path / "out" / "result.json").read_text())["steps"] == 4


def test_gsm8k_trial_on_a_tiny_local_model_runs_end_to_end(tmp_path):
    """The hub code path (AutoModelForCausalLM / AutoTokenizer.from_pretrained) on a model
    saved locally, trained and scored on a handful of real GSM8K_DATA problems."""
    from rankstudy.model.tiny import tiny_model
    from rankstudy.model.tokenizer import byte_tokenizer

    model_dir = tmp_path / "tiny-llama"
    tiny_model("llama", vocab=258, max_positions=1024).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    spec = {
        "name": "gsm8k-tiny",
        "model": {"name": str(model_dir)},
        "task": {
            "kind": "gsm8k",
            "path": str(GSM8K_DATA),
            "shots": 1,
            "max_new_tokens": 8,
            "max_length": 640,
            "validation_size": 3,
            "max_train": 8,
            "max_eval": 3,
        },
        "adapters": {"max_rank": 4, "train_ranks": [1, 4]},
        "training": {"steps": 2, "micro_batch_size": 2, "eval_batch_size": 3, "lr": 1e-3},
    }
    result = trial("matryoshka", tmp_path / "out", spec=spec)
    assert list(result["scores"]) == ["1", "4"] and "reference" not in result
    assert all(0.0 <= s <= 1.0 for s in result["scores"].values())
    assert result["cost"]["train_tokens"] > 2 * 2 * 100  # real problems, hundreds of bytes


def test_every_zero_stage_trains_the_same_adapters(tmp_path, monkeypatch):
    """ZeRO stages partition optimizer state, gradients and parameters differently; on one
    process, in fp32, they must not change the training. Each stage is read back from the
    engine DeepSpeed built, not taken from the spec."""
    import deepspeed

    built = []
    real = deepspeed.initialize

    def spy(*args, **kwargs):
        engine, *rest = real(*args, **kwargs)
        built.append(engine.zero_optimization_stage())
        return engine, *rest

    monkeypatch.setattr(deepspeed, "initialize", spy)
    runs = {}
    for stage in (0, 1, 2, 3):
        out = tmp_path / f"zero{stage}"
        overrides = [f"deepspeed.zero_stage={stage}", "training.steps=3", "training.eval_every=0"]
        result = trial("matryoshka", out, overrides)
        adapters = load_file(out / "checkpoints" / "step3" / "adapters.safetensors")
        runs[stage] = (result, adapters)
    assert built == [0, 1, 2, 3]
    base, base_adapters = runs[0]
    assert base["steps"] == 3 and base["loss_curve"][-1] < base["loss_curve"][0]
    for stage, (result, adapters) in runs.items():
        assert result["loss_curve"] == pytest.approx(base["loss_curve"], rel=1e-5), stage
        assert result["validation_scores"] == pytest.approx(base["validation_scores"], abs=0.02)
        assert adapters.keys() == base_adapters.keys()
        for key, value in adapters.items():
            # stage 3 gathers partitioned parameters: its adapters differ in the last bits
            torch.testing.assert_close(value, base_adapters[key], rtol=1e-4, atol=1e-5)
    moved = base_adapters[next(k for k in base_adapters if k.endswith("lora_B"))]
    assert moved.abs().max() > 1e-3  # B starts at zero: the adapters compared did train


def test_validation_only_run_then_test_pass_matches_one_full_run(tmp_path):
    """The study's protocol: search trials stop at validation; the chosen one is scored on test
    by running it again, which resumes at its final checkpoint and trains nothing."""
    full = trial("matryoshka", tmp_path / "full")
    config = {"spec": SMALL, "arm": "matryoshka", "out_dir": str(tmp_path / "split")}
    searched = run_trial(config | {"splits": ["validation"]}).wire()
    assert searched["scores"] == {} and searched["aurac"] == {}
    assert searched["validation_scores"] == full["validation_scores"]
    tested = run_trial(config | {"splits": ["test"]}).wire()
    assert tested["scores"] == full["scores"] and tested["aurac"] == full["aurac"]
    assert tested["validation_scores"] == full["validation_scores"]
    assert tested["loss_curve"] == full["loss_curve"]
    assert tested["cost"]["train_tokens"] == full["cost"]["train_tokens"]
    assert tested["cost"]["eval_seconds"] > searched["cost"]["eval_seconds"]


# a trial in a new process whose planted task may not search its scale: it must read the cache
FRESH_PROCESS = """
import json, sys, torch
from rankstudy.tasks import planted
def no_search(*args, **kwargs):
    raise SystemExit("find_scale ran: the calibration cache was not read")
planted.find_scale = no_search
torch.set_num_threads(1)
from rankstudy.trial.lifecycle import run_trial
run_trial(json.loads(sys.argv[1]))
"""


def test_the_planted_calibration_is_charged_to_the_study_not_the_first_arm(tmp_path):
    """The first trial of a study calibrates the planted task for every later one; that time
    (or the wait for it) is not the arm's device time, else whichever arm runs first pays.
    A trial in a new process reads the calibration (it may not search the scale) and trains
    exactly what a trial with the task in memory trains."""
    from rankstudy.model import build

    def config(arm: str, out: str) -> dict:
        config = {"spec": SMALL, "arm": arm, "out_dir": str(tmp_path / out), "overrides": []}
        return config | {"cache_dir": str(tmp_path / "cache")}

    build._PLANTED.clear()
    first = run_trial(config("lora_r1", "first")).wire()
    again = run_trial(config("lora_r2", "again")).wire()  # the same trial process reuses the task
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(config("lora_r2", "fresh"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads((tmp_path / "fresh" / "result.json").read_text())
    assert fresh["scores"] == again["scores"] and fresh["reference"] == again["reference"]
    assert fresh["loss_curve"] == again["loss_curve"]
    assert first["cost"]["shared_setup_seconds"] > 0 == again["cost"]["shared_setup_seconds"]
    for c in (first["cost"], again["cost"], fresh["cost"]):
        assert c["device_seconds"] == pytest.approx(c["wall_seconds"] - c["shared_setup_seconds"])


@pytest.mark.parametrize("failing", [False, True])
def test_a_finished_trial_leaves_no_model_behind(tmp_path, monkeypatch, failing):
    """Ray Tune reuses trial actors: a trial that ended, well or not, must free its model,
    or each trial of a study adds a model to the actor's memory (DeepSpeed keeps global
    references to an engine's parameters until the engine is destroyed)."""
    import gc
    import weakref

    import rankstudy.trial.lifecycle as trial_module

    models = []
    real = trial_module.build_engine

    def spy(model, *args, **kwargs):
        models.append(weakref.ref(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trial_module, "build_engine", spy)
    if failing:
        with pytest.raises(TrialFailed):
            overrides = ["adapters.alpha=1e30", "training.lr=1.0", "training.warmup_ratio=0"]
            trial("lora_r8", tmp_path, overrides)
    else:
        trial("lora_r2", tmp_path, ["training.eval_every=0"])
    gc.collect()
    assert len(models) == 1 and models[0]() is None
