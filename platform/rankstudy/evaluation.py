"""Scoring a trial's model: every evaluation rank under every inference rule, on a split that
the trial's workers shard and then all-reduce, so no score depends on how many there are."""

from __future__ import annotations

import torch
import torch.distributed as dist

from rankstudy.adapters import set_rank
from rankstudy.arms import Arm
from rankstudy.metrics import aurac
from rankstudy.tasks.base import Task

# {metric: {rule: {rank: score}}}, "score" being the task's primary metric
Scores = dict[str, dict[str, dict[int, float]]]


def reduce(value: float, op=dist.ReduceOp.SUM) -> float:
    """All-reduce one number across the trial's workers (on the GPU under nccl)."""
    device = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.item()


def evaluate(model, task: Task, split: str, arm: Arm, rules: list[str], batch_size: int) -> Scores:
    """Every evaluation rank of the arm under each rule that gives its method a different model
    (methods.Method.rules; LoRA at its own rank has one)."""
    scores: Scores = {}
    for rule in rules if len(arm.kind.rules) > 1 else rules[:1]:
        for k in arm.eval_ranks:
            set_rank(model, k, rule)
            for metric, value in score_split(model, task, split, batch_size).items():
                scores.setdefault(metric, {}).setdefault(rule, {})[k] = value
    set_rank(model, None)
    return scores


def score_split(model, task: Task, split: str, batch_size: int) -> dict[str, float]:
    """{metric: mean score} of the model as it is set now; every worker scores its shard."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n = task.size(split)
    was_training = model.training
    model.eval()
    sums = task.score_sums(model, split, list(range(rank, n, world)), batch_size)
    model.train(was_training)
    return {metric: reduce(total) / n for metric, total in sums.items()}


def selection_metric(arm: Arm, curve: dict[int, float]) -> float:
    """Validation AURAC (log2) for nested arms; the score at its own rank for a grid arm."""
    if arm.nested:
        return aurac(list(curve), list(curve.values()))
    return curve[arm.max_rank]
