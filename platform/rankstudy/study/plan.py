"""What a study will spend, before anything runs: its arms and trials, training tokens, FLOPs,
device-hours and money, and the Matryoshka run's cost against the LoRA grid's.

Counts follow the study's own rules: every arm gets trials_per_arm search trials (training and
validation), and each inference rule an arm serves gets a test pass per seed: the first seed
scores the chosen trial on test, every further seed trains it again. Rules that choose the same
trial share a pass, so the counts are upper bounds. Text tasks count max_length tokens per
example (an upper bound: the tokenizer of a hub model may not be at hand when planning).
FLOPs come from rankstudy.core.cost on the model's shape, read off its config by
rankstudy.model.architecture (no weights, and no torch for the architectures it lays out). Seconds
come from a throughput: the spec's, or one measured by a short calibration trial of the
max-rank LoRA arm on this machine.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from rankstudy.core.arms import (
    GRID_METHOD,
    arm_rules,
    grid_arm,
    method_arms,
    method_rule,
    parse_arm,
    study_arms,
    trial_rules,
)
from rankstudy.core.cost import ModelShape, eval_flops, train_flops
from rankstudy.core.spec import StudySpec
from rankstudy.model.architecture import Architecture, read_architecture
from rankstudy.tasks.rows import gsm8k_splits, jsonl_splits


def shape_of(spec: StudySpec, arch: Architecture | None = None) -> ModelShape:
    """The FLOP-relevant shape of the base with the spec's adapters, from the model's config.
    arch: the architecture, when the caller has read it already."""
    arch = read_architecture(spec.model) if arch is None else arch
    return arch.shape(spec.adapters.target_modules)


def split_sizes(spec: StudySpec) -> dict[str, int]:
    """Examples per split, as the trial will see them: the planted task's are its spec's; a
    text task's are counted on the rows its task would build its splits from
    (rankstudy.tasks.rows: no torch, and no tokenizer, which never decides a split)."""
    task = spec.task
    if task.kind == "planted":
        return {
            "train": task.train_size,
            "validation": task.validation_size,
            "test": task.test_size,
        }
    if task.kind == "gsm8k":
        _, rows = gsm8k_splits(
            task.path,
            task.shots,
            task.validation_size,
            task.test_size,
            task.max_train,
            task.max_eval,
            seed=spec.seed,
        )
    else:  # a jsonl spec has no test_size: a carved test slice is validation_size long
        rows = jsonl_splits(
            task.train,
            task.validation,
            task.test,
            task.prompt_field,
            task.response_field,
            task.validation_size,
            max_train=task.max_train,
            max_eval=task.max_eval,
            seed=spec.seed,
        )
    return {s: len(rows[s]) for s in ("train", "validation", "test")}


# openai/gsm8k ("main") as the hub publishes it: the rows a plan counts where the hub is out of
# reach (a cluster's spec planned on a laptop offline); the study itself reads the real rows
GSM8K_HUB_ROWS = {"train": 7473, "test": 1319}


def published_split_sizes(spec: StudySpec) -> dict[str, int]:
    """Examples per split of the hub's GSM8K from its published row counts, held out and cut
    as rankstudy.tasks.rows.gsm8k_splits does (validation from train; max_train, max_eval)."""
    task = spec.task
    if task.kind != "gsm8k":
        raise ValueError(f"task: {task.kind} has no published split sizes")
    keep = {"train": task.max_train, "validation": task.max_eval, "test": task.max_eval}
    full = {
        "train": GSM8K_HUB_ROWS["train"] - task.validation_size,
        "validation": task.validation_size,
        "test": GSM8K_HUB_ROWS["test"],
    }
    return {s: min(n, keep[s] or n) for s, n in full.items()}


def sequence_tokens(spec: StudySpec) -> int:
    return spec.task.seq_len if spec.task.kind == "planted" else spec.task.max_length


def training_steps(spec: StudySpec, train_examples: int) -> int:
    """trial.total_steps without building the task."""
    t = spec.training
    batch = t.micro_batch_size * t.grad_accum * spec.resources.workers
    return t.steps or max(1, math.ceil(t.epochs * train_examples / batch))


def _arm_plan(
    spec: StudySpec,
    shape: ModelShape,
    sizes: dict[str, int],
    name: str,
    tokens: int,
    validations: int,
) -> tuple[dict, dict[str, float]]:
    """An arm's runs, tokens and FLOPs as it runs; and, per rule it is served under, what a
    method served under that rule pays on it, as the study charges it
    (rankstudy.core.scoring.total_cost): the search, its rule's repeats and test passes, and its
    rule's scoring only."""
    seq, seeds = sequence_tokens(spec), len(spec.seeds or [spec.seed])
    rules = arm_rules(name, spec)
    arm = parse_arm(name, spec)
    per_rank = train_flops(shape, tokens, seq, arm.method, arm.max_rank, arm.train_ranks)
    # a trial scores each of its rules that changes the model's output, at its ranks: its own
    # rule at every validation, the others at the last one only (as trial.py)
    scored = arm.rules_scored(trial_rules(spec, name))
    val = {
        u: (validations if i == 0 else 1) * eval_flops(shape, sizes["validation"] * seq, seq, ks)
        for i, (u, ks) in enumerate(scored)
    }
    test = {u: eval_flops(shape, sizes["test"] * seq, seq, ks) for u, ks in scored}
    trainings = spec.search.trials_per_arm + len(rules) * (seeds - 1)
    runs = {
        "method": arm.method,
        "training_runs": trainings,
        "test_passes": len(rules) * seeds,
        "tokens": trainings * tokens,
        "flops": trainings * (per_rank + sum(val.values()))
        + len(rules) * seeds * sum(test.values()),
    }
    charged = {
        u: (spec.search.trials_per_arm + seeds - 1) * (per_rank + val.get(u, 0.0))
        + seeds * test.get(u, 0.0)
        for u in rules
    }
    return runs, charged


def plan(spec: StudySpec, shape: ModelShape, sizes: dict[str, int]) -> dict:
    """Per arm and per method: runs, tokens and FLOPs; seconds and money once a throughput is
    known (add_time)."""
    seq = sequence_tokens(spec)
    t = spec.training
    steps = training_steps(spec, sizes["train"])
    tokens = steps * t.micro_batch_size * t.grad_accum * spec.resources.workers * seq
    seeds = len(spec.seeds or [spec.seed])
    validations = 1 + ((steps - 1) // t.eval_every if t.eval_every else 0)  # as trial.py
    arms, by_rule = {}, {}
    for name in study_arms(spec):
        arms[name], by_rule[name] = _arm_plan(spec, shape, sizes, name, tokens, validations)
    methods = {}
    for m in spec.methods:
        used, rule = method_arms(m, spec), method_rule(m)
        methods[m] = {
            "arms": used,
            "trials": sum(spec.search.trials_per_arm + seeds - 1 for _ in used),
            "tokens": sum((spec.search.trials_per_arm + seeds - 1) * tokens for _ in used),
            "flops": sum(by_rule[a][rule] for a in used),
        }
    out = {
        "study": spec.name,
        "steps_per_trial": steps,
        "tokens_per_trial": tokens,
        "arms": arms,
        "methods": methods,
        "total": {
            "training_runs": sum(a["training_runs"] for a in arms.values()),
            "test_passes": sum(a["test_passes"] for a in arms.values()),
            "tokens": sum(a["tokens"] for a in arms.values()),
            "flops": sum(a["flops"] for a in arms.values()),
        },
    }
    if GRID_METHOD in methods and "matryoshka" in methods:
        out["matryoshka_over_lora_grid"] = (
            methods["matryoshka"]["flops"] / methods[GRID_METHOD]["flops"]
        )
    return out


def add_time(out: dict, spec: StudySpec, shape: ModelShape, device: str, tps: float) -> dict:
    """Device-hours (and money when priced) from a throughput of the max-rank LoRA arm: tps
    tokens a second on one device, i.e. tps x its FLOPs per token."""
    seq = sequence_tokens(spec)
    r = spec.adapters.max_rank
    flops_per_second = tps * train_flops(shape, 1, seq, "lora", r)
    out["throughput"] = {"device": device, "tokens_per_second": tps}
    for row in [*out["arms"].values(), *out["methods"].values(), out["total"]]:
        row["device_hours"] = row["flops"] / flops_per_second / 3600
        if spec.price_per_device_hour is not None:
            row["money"] = row["device_hours"] * spec.price_per_device_hour
    return out


def calibrate(spec_raw: dict, overrides: list[str], steps: int = 20) -> tuple[str, float]:
    """(device, tokens a second) of a short trial of the max-rank LoRA arm on this machine."""
    import torch

    from rankstudy.core.records import TrialConfig
    from rankstudy.core.spec import parse_spec
    from rankstudy.trial.lifecycle import run_trial

    overrides = [*overrides, f"training.steps={steps}", "training.epochs=null"]
    spec = parse_spec(spec_raw, overrides)
    with tempfile.TemporaryDirectory(prefix="rankstudy-calibrate-") as tmp:
        cost = run_trial(
            TrialConfig(
                spec=spec,
                arm=grid_arm(spec.adapters.max_rank),
                out_dir=str(Path(tmp) / "trial"),
                overrides=overrides,
                splits=[],
            )
        ).cost
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    per_device = cost.train_tokens / cost.train_seconds / spec.resources.workers
    return device, per_device


def plan_table(out: dict) -> str:
    timed = "throughput" in out
    priced = timed and "money" in out["total"]
    head = f"{'method':<30}{'trials':>7}{'tokens':>11}{'FLOPs':>11}"
    head += f"{'dev-hours':>11}" if timed else ""
    head += f"{'money':>10}" if priced else ""
    lines = [
        f"study {out['study']}: {len(out['arms'])} arms, {out['total']['training_runs']} "
        f"training runs and {out['total']['test_passes']} test passes (at most), "
        f"{out['steps_per_trial']} steps x {out['tokens_per_trial']:,} tokens a trial",
        head,
    ]
    for name, row in [*out["methods"].items(), ("all arms, each once", out["total"])]:
        line = f"{name:<30}{row.get('trials', row.get('training_runs')):>7}"
        line += f"{row['tokens']:>11.3g}{row['flops']:>11.3g}"
        line += f"{row['device_hours']:>11.3g}" if timed else ""
        line += f"{row['money']:>10.2f}" if priced else ""
        lines.append(line)
    if timed:
        t = out["throughput"]
        lines.append(f"throughput: {t['tokens_per_second']:,.0f} tokens/s on {t['device']}")
    if "matryoshka_over_lora_grid" in out:
        lines.append(f"matryoshka / lora_grid cost: {out['matryoshka_over_lora_grid']:.3f}")
    return "\n".join(lines)
