"""The reference protocol's two training settings, as spec options beside rankstudy's defaults:
pure bf16 (deepspeed.precision: bf16_pure) and DyLoRA's draw per micro-batch
(adapters.rank_draw), and the shapes of the learning-rate schedules."""

import math
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import rankstudy.trial.lifecycle as trial_module
from rankstudy.core.records import TrialConfig
from rankstudy.core.spec import SpecError, parse_spec
from rankstudy.trial.lifecycle import Trial, lr_lambda, run_trial
from studies import SMALL

QUICK = ["training.eval_every=0", "training.checkpoint_every=0"]


def trained(arm: str, out, overrides, inspect=None):
    """Set up and train a trial (no scoring); inspect(trial) sees it before it is freed."""
    config = {"spec": SMALL, "arm": arm, "out_dir": str(out), "overrides": list(overrides)}
    t = Trial(TrialConfig.of(config))
    try:
        t.setup()
        t.train()
        return inspect(t) if inspect else None
    finally:
        t.close()


def optimizer_dtypes(t: Trial) -> dict[str, set]:
    """The dtypes of what AdamW updates (the ZeRO optimizer's master partitions) and of its
    exp_avg / exp_avg_sq, read off the engine; and of the model's adapter parameters."""
    adamw = t.engine.optimizer.optimizer  # torch's AdamW inside DeepSpeed's ZeRO optimizer
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.state, "AdamW has no state: no step was taken"
    return {
        "adapters": {p.dtype for p in t.engine.module.parameters() if p.requires_grad},
        "master": {p.dtype for p in adamw.state},
        "exp_avg": {s["exp_avg"].dtype for s in adamw.state.values()},
        "exp_avg_sq": {s["exp_avg_sq"].dtype for s in adamw.state.values()},
        "losses": t.progress.losses,
    }


@pytest.mark.parametrize(
    "precision,stage,adapters,state",
    [
        ("auto", 2, torch.float32, torch.float32),  # the CPU default: fp32 throughout
        ("bf16", 2, torch.bfloat16, torch.float32),  # DeepSpeed's fp32 master weights
        ("bf16_pure", 1, torch.bfloat16, torch.bfloat16),
        ("bf16_pure", 2, torch.bfloat16, torch.bfloat16),
        ("bf16_pure", 3, torch.bfloat16, torch.bfloat16),
    ],
)
def test_pure_bf16_keeps_adapters_and_adamw_state_in_bf16_with_no_fp32_copy(
    tmp_path, precision, stage, adapters, state
):
    """Under bf16_pure AdamW updates bf16 tensors and keeps bf16 moments (the reference's HF
    Trainer on a bf16 model); DeepSpeed's bf16 keeps fp32 ones, the CPU default is fp32."""
    overrides = [f"deepspeed.precision={precision}", f"deepspeed.zero_stage={stage}"]
    got = trained("dylora", tmp_path, [*overrides, "training.steps=6", *QUICK], optimizer_dtypes)
    assert got["adapters"] == {adapters}
    assert got["master"] == got["exp_avg"] == got["exp_avg_sq"] == {state}
    losses = got["losses"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


def test_pure_bf16_trial_scores_resumes_exactly_and_exports(tmp_path):
    """A bf16_pure trial is scored, resumes from a mid-run checkpoint to the same bf16
    adapters as the uninterrupted run, and its rank-k export (through an fp32 base, as
    `rankstudy export` loads it) is a float32 PEFT adapter."""
    from rankstudy.adapters import export_peft, load_adapters
    from rankstudy.model.build import load_model

    overrides = ["deepspeed.precision=bf16_pure", "training.steps=4", "training.eval_every=0"]
    overrides += ["training.checkpoint_every=2"]
    full = run_trial(
        {
            "spec": SMALL,
            "arm": "matryoshka",
            "out_dir": str(tmp_path / "full"),
            "overrides": overrides,
        }
    ).wire()
    assert all(0.0 <= s <= 1.0 for s in full["scores"].values())
    resume_at(tmp_path / "full", tmp_path / "resumed", 2)
    resumed = run_trial(
        {
            "spec": SMALL,
            "arm": "matryoshka",
            "out_dir": str(tmp_path / "resumed"),
            "overrides": overrides,
        }
    ).wire()
    ckpt = tmp_path / "resumed" / "checkpoints"
    assert resumed["resumed_from"] == [2]
    assert resumed["loss_curve"] == full["loss_curve"] and resumed["scores"] == full["scores"]
    saved = load_file(tmp_path / "full" / "checkpoints" / "step4" / "adapters.safetensors")
    again = load_file(ckpt / "step4" / "adapters.safetensors")
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}  # saved as trained
    for key, value in saved.items():
        assert torch.equal(value, again[key]), key
    model = load_model(parse_spec(SMALL).model, torch.float32).model
    load_adapters(model, tmp_path / "full" / "checkpoints" / "step4" / "adapters.safetensors")
    out = export_peft(model, 4, tmp_path / "rank4")
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # noqa: SIM118


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["deepspeed.precision=bf16_pure", "deepspeed.zero_stage=0"],
            "deepspeed: precision: bf16_pure needs zero_stage 1, 2 or 3",
        ),
        (
            ["deepspeed.precision=bf16_pure", "deepspeed.offload_optimizer=true"],
            "deepspeed: precision: bf16_pure does not work with offload_optimizer: true",
        ),
        (["adapters.rank_draw=forward"], "adapters.rank_draw: Input should be 'step' or"),
    ],
)
def test_settings_the_engine_cannot_run_are_refused_naming_the_field(overrides, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(SMALL, overrides)


def per_micro_batch(monkeypatch, read) -> list:
    """What read(engine) gives at each micro-batch, taken where the loop computes its loss."""
    seen = []
    real = trial_module.method_loss

    def spy(model, task, batch, arm):
        seen.append(read(model))
        return real(model, task, batch, arm)

    monkeypatch.setattr(trial_module, "method_loss", spy)
    return seen


def resume_at(run, out, step: int) -> None:
    """Make `out` a trial folder whose latest checkpoint is `run`'s at `step`."""
    shutil.copytree(run / "checkpoints" / f"step{step}", out / "checkpoints" / f"step{step}")
    (out / "checkpoints" / "latest").write_text(f"step{step}")


def draws(monkeypatch, out, arm, overrides=()) -> list[list]:
    """The b each micro-batch trained, grouped by optimizer step (grad_accum 4, 6 steps)."""
    with monkeypatch.context() as m:
        seen = per_micro_batch(m, lambda model: trial_module.get_schedule(model).sampled_rank)
        base = ["training.grad_accum=4", "training.steps=6", "training.eval_every=0"]
        trained(arm, out, [*base, "training.checkpoint_every=3", *overrides])
    return [seen[i : i + 4] for i in range(0, len(seen), 4)]


@pytest.mark.parametrize("arm", ["dylora", "nested_sampled"])
def test_draw_per_micro_batch_is_seeded_and_resumes_exactly(tmp_path, monkeypatch, arm):
    """adapters.rank_draw: micro_batch draws b at every micro-batch of a step (the reference's
    draw per forward), reproducibly from the seed, and a resumed run draws on as the
    uninterrupted one did; the default draws once a step."""
    per_micro = ["adapters.rank_draw=micro_batch"]
    first = draws(monkeypatch, tmp_path / "first", arm, per_micro)
    assert len(first) == 6 and all(len(step) == 4 for step in first)
    assert any(len(set(step)) > 1 for step in first)  # the micro-batches of a step differ
    assert draws(monkeypatch, tmp_path / "again", arm, per_micro) == first
    assert draws(monkeypatch, tmp_path / "seed1", arm, [*per_micro, "seed=1"]) != first
    resume_at(tmp_path / "first", tmp_path / "resumed", 3)
    assert draws(monkeypatch, tmp_path / "resumed", arm, per_micro) == first[3:]
    per_step = draws(monkeypatch, tmp_path / "per_step", arm)
    assert all(len(set(step)) == 1 for step in per_step)  # the default: one b a step


def test_linear_schedule_without_warmup_decays_from_lr_to_zero():
    """HF's linear schedule, as the reference's Trainer runs it: step i trains at
    lr * (1 - i / steps), so step 0 at lr, the last at lr / steps, and 0 after it."""
    spec = parse_spec(SMALL, ["training.lr_schedule=linear", "training.warmup_ratio=0"])
    f = lr_lambda(spec, 100)
    assert [f(0), f(50), f(99), f(100)] == pytest.approx([1.0, 0.5, 0.01, 0.0])


def test_cosine_schedule_warms_up_linearly_then_follows_half_a_cosine():
    """The default: warmup_ratio 0.05 of 100 steps is 5 steps from 0 up to lr, then
    lr * (1 + cos(pi * (i - 5) / 95)) / 2 down to 0."""
    spec = parse_spec(SMALL, ["training.lr_schedule=cosine", "training.warmup_ratio=0.05"])
    f = lr_lambda(spec, 100)
    assert [f(0), f(1), f(5)] == pytest.approx([0.0, 0.2, 1.0])
    for i in (20, 52.5, 99):
        assert f(int(i)) == pytest.approx((1 + math.cos(math.pi * (int(i) - 5) / 95)) / 2)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_the_engine_steps_the_schedule_once_per_optimizer_step(tmp_path, monkeypatch):
    """Under accumulation every micro-batch of step i trains at lr * lambda(i): DeepSpeed
    steps the scheduler at the accumulation boundary only."""
    seen = per_micro_batch(monkeypatch, lambda engine: engine.get_lr()[0])
    overrides = ["training.lr_schedule=linear", "training.warmup_ratio=0", "training.lr=0.004"]
    trained("lora_r2", tmp_path, [*overrides, "training.grad_accum=2", "training.steps=4"])
    lrs = [0.004, 0.003, 0.002, 0.001]
    assert seen == pytest.approx([lr for lr in lrs for _ in range(2)])


def test_pure_bf16_is_refused_on_a_gpu_without_bf16(monkeypatch):
    """The GPU check that refuses bf16 below compute capability 8.0 refuses bf16_pure too."""
    from rankstudy.model.devices import device_problem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a: False)
    spec = parse_spec(SMALL, ["resources.use_gpu=true", "deepspeed.precision=bf16_pure"])
    assert device_problem(spec).startswith(
        "deepspeed.precision: bf16_pure needs a GPU that computes in bf16 (compute capability "
        "8.0 or later); this machine's Tesla V100-SXM2-16GB is compute capability 7.0"
    )


def adapters_and_draws(t: Trial) -> dict:
    """The trained adapter tensors at the end of train(), and the steps it resumed from."""
    trainable = t.engine.module.named_parameters()
    return {
        "adapters": {n: p.detach().clone() for n, p in trainable if p.requires_grad},
        "resumed_from": list(t.progress.resumed_from),
    }


def test_a_resumed_nested_sampled_trial_trains_the_adapters_of_an_uninterrupted_one(tmp_path):
    """nested_sampled draws a rank each step: a trial resumed from its step-3 checkpoint (its
    draw generator, optimizer and adapters) ends with the uninterrupted run's adapters, to the
    bit; a resume that drew afresh would train other ranks at steps 4-6."""
    overrides = ["training.steps=6", "training.checkpoint_every=3", "training.eval_every=0"]
    full = trained("nested_sampled", tmp_path / "full", overrides, adapters_and_draws)
    resume_at(tmp_path / "full", tmp_path / "resumed", 3)
    resumed = trained("nested_sampled", tmp_path / "resumed", overrides, adapters_and_draws)
    assert resumed["resumed_from"] == [3] and full["resumed_from"] == []
    assert full["adapters"].keys() == resumed["adapters"].keys() and full["adapters"]
    for name, tensor in full["adapters"].items():
        assert torch.equal(tensor, resumed["adapters"][name]), name
