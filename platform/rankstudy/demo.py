"""A one-minute rank study on the planted task with a plain PyTorch loop.

It shows the adapter package working end to end: LoRA at each rank in S, DyLoRA and
MatryoshkaLoRA at R trained on the same data and budget, scored at every rank, summarised by
AURAC, and the Matryoshka adapter exported at a low rank and reloaded through PEFT. The study
(Ray Tune, DeepSpeed, MLflow) is the platform's real path; this is its smallest precursor.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rankstudy.adapters import attach_adapters, export_peft, powers_of_two, set_rank
from rankstudy.metrics import aurac
from rankstudy.models import tiny_model
from rankstudy.tasks.planted import (
    agreement,
    find_scale,
    logits_of,
    plant_deltas,
    soft_cross_entropy,
    teacher_model,
)

TARGETS = ["q_proj", "v_proj"]


def train(model, inputs, teacher_logits, steps, lr, batch, seed, label):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(inputs), (batch,), generator=gen)
        loss = soft_cross_entropy(model(inputs[idx]).logits, teacher_logits[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, steps // 3) == 0 or step == steps:
            rate = step / (time.perf_counter() - start)
            print(
                f"  {label:<12} step {step:>4}/{steps}  loss {loss.item():.4f}  "
                f"{rate:6.1f} steps/s  eta {(steps - step) / rate:5.1f}s",
                flush=True,
            )
    model.eval()


def run_demo(
    max_rank: int = 16,
    steps: int = 150,
    shift: float = 0.5,
    seed: int = 0,
    out_dir: str = "runs/demo",
) -> dict:
    torch.manual_seed(seed)
    ranks = powers_of_two(max_rank)
    base = tiny_model("llama", seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    train_x = torch.randint(0, 256, (1024, 32), generator=gen)
    test_x = torch.randint(0, 256, (256, 32), generator=gen)
    deltas = plant_deltas(base, TARGETS, rank=max_rank, seed=seed)
    scale, got = find_scale(base, deltas, test_x, shift)
    teacher = teacher_model(base, deltas, scale)
    train_t, test_t = logits_of(teacher, train_x), logits_of(teacher, test_x)
    print(
        f"planted task: shift {got:.2f} (asked {shift}), base agreement "
        f"{agreement(logits_of(base, test_x), test_t):.3f}"
    )

    def student(method, rank):
        model = tiny_model("llama", seed=seed)
        attach_adapters(model, method, rank, ranks, target_modules=TARGETS, seed=seed)
        train(model, train_x, train_t, steps, 3e-3, 32, seed, f"{method}@{rank}")
        return model

    def score(model, k):
        set_rank(model, k)
        return agreement(logits_of(model, test_x), test_t)

    curves = {"lora_grid": [score(student("lora", r), r) for r in ranks]}
    reference = [
        agreement(logits_of(teacher_model(base, deltas, scale, k), test_x), test_t) for k in ranks
    ]
    for method in ("dylora", "matryoshka"):
        model = student(method, max_rank)
        curves[method] = [score(model, k) for k in ranks]
        if method == "matryoshka":
            matryoshka = model

    print(
        f"\n{'method':<12}"
        + "".join(f"{'r=' + str(r):>7}" for r in ranks)
        + f"{'AURAC log2':>12}{'linear':>8}"
    )
    for name, scores in {**curves, "reference": reference}.items():
        print(
            f"{name:<12}"
            + "".join(f"{s:7.3f}" for s in scores)
            + f"{aurac(ranks, scores):12.3f}{aurac(ranks, scores, 'linear'):8.3f}"
        )

    k = ranks[len(ranks) // 2]
    path = export_peft(matryoshka, k, Path(out_dir) / f"matryoshka-rank{k}")
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(tiny_model("llama", seed=seed), path)
    peft_score = agreement(logits_of(reloaded, test_x), test_t)
    print(
        f"\nmatryoshka at rank {k} exported to {path} (PEFT format); "
        f"PEFT-loaded score {peft_score:.3f} == ours {score(matryoshka, k):.3f}"
    )
    return {"ranks": list(ranks), "curves": curves, "reference": reference}
