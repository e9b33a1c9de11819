"""Per-method training step time on the planted default, in a DeepSpeed engine and in a plain
PyTorch optimizer, both driven by the study's own trial (rankstudy.trial.lifecycle.Trial.train_step)
with the same model, data and steps, measured side by side.

Every trial is set up first; then rounds run a few steps of each in turn, so machine noise hits
all alike. Prints ms/step, tokens/s and the engine / plain ratio.

    .venv/bin/python benchmarks/trial_step.py [--spec jobs/specs/planted-cpu.yaml] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

from rankstudy.core.arms import parse_arm
from rankstudy.core.records import TrialConfig
from rankstudy.core.spec import load_spec
from rankstudy.model.build import build_task, load_model
from rankstudy.model.engine import init_distributed
from rankstudy.trial.lifecycle import Trial

ARMS = ["lora_r32", "dylora", "matryoshka", "matryoshka_binary", "nested_multiloss"]


class PlainEngine(nn.Module):
    """What a trial asks of its engine, done by a plain AdamW: the baseline DeepSpeed's own
    per-step work (ZeRO bookkeeping, its clipping) is measured against."""

    skipped_steps = 0

    def __init__(self, model: nn.Module, spec, lr_lambda) -> None:
        super().__init__()
        t = spec.training
        self.module, self.clip, self.accum, self.micro = model, t.max_grad_norm, t.grad_accum, 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.device = next(model.parameters()).device

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self) -> None:
        self.micro += 1
        if self.micro % self.accum:
            return
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def destroy(self) -> None:
        pass


def plain_engine(model, spec, world, gpu, lr_lambda):
    return (PlainEngine(model, spec, lr_lambda),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="jobs/specs/planted-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    init_distributed(gpu=False)
    base, _, _ = load_model(spec.model, torch.float32)
    task = build_task(spec, base, None, parse_arm("dylora", spec), spec.seed)  # shared by all
    trials, folders = {}, []
    for arm in ARMS:
        for path, make in (("plain", plain_engine), ("deepspeed", None)):
            folders.append(tempfile.TemporaryDirectory())
            config = TrialConfig(spec=spec, arm=arm, out_dir=folders[-1].name)
            model, _, _ = load_model(spec.model, torch.float32)
            kwargs = {"make_engine": make} if make else {}
            trials[(arm, path)] = Trial(config).setup(model=model, task=task, **kwargs)
    times = {key: [] for key in trials}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for key, trial in trials.items():
            trial.engine.train()
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                trial.train_step()
            times[key].append((time.perf_counter() - start) / args.steps_per_round)
    report(spec, task, args, times)
    for trial in trials.values():
        trial.close()


def report(spec, task, args, times) -> None:
    t = spec.training
    tokens = t.micro_batch_size * t.grad_accum * task.collate("train", [0])["input_ids"].shape[1]
    print(
        f"{spec.name}: micro-batch {t.micro_batch_size}, {tokens} tokens/step, 1 thread, "
        f"ZeRO-{spec.deepspeed.zero_stage}, median of {args.rounds} rounds x "
        f"{args.steps_per_round} steps"
    )
    print(f"{'arm':<18}{'plain ms':>10}{'DS ms':>9}{'DS tok/s':>11}{'DS/plain':>10}")
    for arm in ARMS:
        plain = statistics.median(times[(arm, "plain")][1:])
        ds = statistics.median(times[(arm, "deepspeed")][1:])
        print(
            f"{arm:<18}{1000 * plain:10.1f}{1000 * ds:9.1f}{tokens / ds:11,.0f}{ds / plain:10.2f}"
        )
    print("DS/plain above 1 is the engine's own work per step (ZeRO bookkeeping, clipping).")


if __name__ == "__main__":
    main()
