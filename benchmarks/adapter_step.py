"""Forward + backward step time of each adapter method on a tiny Llama, measured side by side.

Every variant runs one step in turn, round after round, so machine noise hits them alike; the
medians are compared as ratios. Targets (issue 2): matryoshka <= 1.03x lora, our lora <= 1.0x
PEFT's LoRA at the same rank.

    .venv/bin/python benchmarks/adapter_step.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from rankstudy.adapters import attach_adapters
from rankstudy.model.tiny import tiny_model

R, S = 32, (1, 2, 4, 8, 16, 32)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIZES = dict(hidden=256, layers=4, heads=8, intermediate=512, vocab=1024)


def ours(method: str) -> torch.nn.Module:
    return attach_adapters(tiny_model("llama", **SIZES), method, R, S, target_modules=TARGETS)


def peft_lora() -> torch.nn.Module:
    config = LoraConfig(r=R, lora_alpha=R**0.5, target_modules=TARGETS, lora_dropout=0.0)
    return get_peft_model(tiny_model("llama", **SIZES), config)


def step_fn(model: torch.nn.Module, batch: torch.Tensor):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # B = 0 at init would hide nothing, but start like a trained adapter
        for p in params:
            p.normal_(0, 0.02)

    def step() -> float:
        start = time.perf_counter()
        model(batch, labels=batch).loss.backward()
        elapsed = time.perf_counter() - start
        for p in params:
            p.grad = None
        return elapsed

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = torch.randint(0, SIZES["vocab"], (args.batch, args.seq))
    variants = {
        "lora": ours("lora"),
        "matryoshka": ours("matryoshka"),
        "dylora": ours("dylora"),
        "peft_lora": peft_lora(),
    }
    steps = {name: step_fn(model, batch) for name, model in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step())
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"tiny Llama {SIZES}, R={R}, S={S}, all 7 projections, batch {args.batch}x{args.seq}, "
        f"{args.threads} thread(s), median of {args.rounds} interleaved rounds"
    )
    for name, t in med.items():
        print(f"  {name:<11} {1000 * t:8.2f} ms/step")
    print(f"  matryoshka / lora   = {med['matryoshka'] / med['lora']:.3f}  (target <= 1.03)")
    print(f"  dylora / lora       = {med['dylora'] / med['lora']:.3f}  (b drawn from S)")
    print(f"  our lora / PEFT     = {med['lora'] / med['peft_lora']:.3f}  (target <= 1.00)")


if __name__ == "__main__":
    main()
