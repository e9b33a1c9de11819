"""Per-method training step time on the planted default, in a DeepSpeed engine and in a plain
PyTorch loop with the same model, data and steps, measured side by side.

Both paths of every method are built first; then rounds run a few steps of each in turn, so
machine noise hits all alike. Prints ms/step, tokens/s and the engine / plain ratio.

    .venv/bin/python benchmarks/trial_step.py [--spec jobs/specs/planted-cpu.yaml] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rankstudy.adapters import get_schedule
from rankstudy.arms import parse_arm
from rankstudy.build import attach_arm, build_task, load_model
from rankstudy.engine import build_engine, init_distributed
from rankstudy.spec import load_spec
from rankstudy.trial import arm_loss, example_order

ARMS = ["lora_r32", "dylora", "matryoshka", "matryoshka_binary", "nested_multiloss"]


def adapted(spec, arm):
    model, _, _ = load_model(spec.model, torch.float32)
    attach_arm(model, spec, arm)
    get_schedule(model).per_step_draws = True
    return model.train()


def plain_step(model, optimizer, task, arm, indices, clip):
    if arm.method == "dylora":
        get_schedule(model).resample()
    batch = task.collate("train", indices)
    loss = arm_loss(model, task, batch, arm)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def engine_step(engine, task, arm, indices):
    if arm.method == "dylora":
        get_schedule(engine.module).resample()
    loss = arm_loss(engine, task, task.collate("train", indices), arm)
    engine.backward(loss)
    engine.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="jobs/specs/planted-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    init_distributed(gpu=False)
    t = spec.training
    base, _, _ = load_model(spec.model, torch.float32)
    arms = [parse_arm(name, spec) for name in ARMS]
    task = build_task(spec, base, None, arms[1], spec.seed)
    paths = {}
    for arm in arms:
        plain = adapted(spec, arm)
        params = [p for p in plain.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        engine, _, _ = build_engine(adapted(spec, arm), spec, 1, False, lambda step: 1.0)
        paths[arm.name] = {
            "plain": lambda i, m=plain, o=optimizer, a=arm: plain_step(
                m, o, task, a, i, t.max_grad_norm
            ),
            "deepspeed": lambda i, e=engine, a=arm: engine_step(e, task, a, i),
        }
    times = {(a, p): [] for a in paths for p in ("plain", "deepspeed")}
    step = 0
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for arm_name, fns in paths.items():
            for path, fn in fns.items():
                start = time.perf_counter()
                for _ in range(args.steps_per_round):
                    fn(
                        example_order(
                            task.size("train"),
                            spec.seed,
                            step * t.micro_batch_size,
                            t.micro_batch_size,
                        )
                    )
                    step += 1
                times[(arm_name, path)].append((time.perf_counter() - start) / args.steps_per_round)
    tokens = t.micro_batch_size * task.collate("train", [0])["input_ids"].shape[1]
    print(
        f"{spec.name}: micro-batch {t.micro_batch_size}, {tokens} tokens/step, 1 thread, "
        f"ZeRO-{spec.deepspeed.zero_stage}, median of {args.rounds} rounds x "
        f"{args.steps_per_round} steps"
    )
    print(f"{'arm':<18}{'plain ms':>10}{'DS ms':>9}{'DS tok/s':>11}{'DS/plain':>10}")
    for arm_name in paths:
        plain = statistics.median(times[(arm_name, "plain")][1:])
        ds = statistics.median(times[(arm_name, "deepspeed")][1:])
        print(
            f"{arm_name:<18}{1000 * plain:10.1f}{1000 * ds:9.1f}{tokens / ds:11,.0f}"
            f"{ds / plain:10.2f}"
        )
    print("DS/plain above 1 is the engine's own work per step (ZeRO bookkeeping, clipping).")


if __name__ == "__main__":
    main()
