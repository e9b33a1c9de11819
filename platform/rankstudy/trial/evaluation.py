"""Scoring a trial's model: every evaluation rank under every inference rule, on a split that
the trial's workers shard and then all-reduce, so no score depends on how many there are.

Each example's score is kept (the paired bootstrap of rankstudy.core.intervals resamples them);
a split's score is their mean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rankstudy.adapters import adapter_layers, get_schedule, set_rank
from rankstudy.adapters.svd import prepare_svd
from rankstudy.core.arms import Arm
from rankstudy.core.aurac import aurac
from rankstudy.core.methods import SVD_RULES, one_run_curve
from rankstudy.model.engine import gather_partitioned
from rankstudy.tasks.base import Task

# {metric: {rule: {rank: score}}}, "score" being the task's primary metric
Scores = dict[str, dict[str, dict[int, float]]]
# the same, with each example's score in the split's order
ExampleScores = dict[str, dict[str, dict[int, list[float]]]]


@dataclass
class Evaluation:
    """A split scored: the mean of each (metric, rule, rank) and every example's score."""

    scores: Scores = field(default_factory=dict)
    examples: ExampleScores = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # spent scoring each rule

    def add(self, rule: str, k: int, per_example: dict[str, list[float]]) -> None:
        for metric, values in per_example.items():
            self.scores.setdefault(metric, {}).setdefault(rule, {})[k] = sum(values) / len(values)
            self.examples.setdefault(metric, {}).setdefault(rule, {})[k] = values


def reduce(value: float, op=dist.ReduceOp.SUM) -> float:
    """All-reduce one number across the trial's workers (on the GPU under nccl)."""
    return _reduced(torch.tensor([value], dtype=torch.float64), op)[0]


def _reduced(t: torch.Tensor, op=dist.ReduceOp.SUM) -> list[float]:
    device = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
    t = t.to(device)
    dist.all_reduce(t, op=op)
    return t.cpu().tolist()


def evaluate(
    model, task: Task, split: str, arm: Arm, rules: list[str], batch_size: int
) -> Evaluation:
    """Every rank the arm serves under each rule that gives its method a different model
    (rankstudy.core.arms.Arm.rules_scored; LoRA at its own rank has one). The rule the model was
    set to before is set back, so training forwards never run under an inference rule."""
    schedule_rule = get_schedule(model).inference_rule
    scored = arm.rules_scored(rules)
    if any(rule in SVD_RULES for rule, _ in scored):  # once, from the weights as they are now
        prepare_svd(adapter_layers(model), gather_partitioned)
    result = Evaluation()
    for rule, ranks in scored:
        start = time.perf_counter()
        for k in ranks:
            set_rank(model, k, rule)
            result.add(rule, k, score_examples(model, task, split, batch_size))
        result.seconds[rule] = time.perf_counter() - start
    set_rank(model, None, schedule_rule)
    return result


def score_examples(model, task: Task, split: str, batch_size: int) -> dict[str, list[float]]:
    """{metric: each example's score} of the model as it is set now; every worker scores its
    shard, and a sum over workers of zero-filled vectors puts the shards together."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n = task.size(split)
    mine = list(range(rank, n, world))
    was_training = model.training
    model.eval()
    scored = task.score_examples(model, split, mine, batch_size)
    model.train(was_training)
    out = {}
    for metric, values in scored.items():
        full = torch.zeros(n, dtype=torch.float64)
        full[mine] = torch.tensor(values, dtype=torch.float64)
        out[metric] = _reduced(full) if world > 1 else full.tolist()
    return out


def score_split(model, task: Task, split: str, batch_size: int) -> dict[str, float]:
    """{metric: mean score} of the model as it is set now."""
    return {m: sum(v) / len(v) for m, v in score_examples(model, task, split, batch_size).items()}


def selection_metric(arm: Arm, curve: dict[int, float], rule: str = "scaled") -> float:
    """Validation AURAC (log2) for an arm served over ranks (a nested arm, or a grid arm served
    as one run); the score at its own rank for a grid arm."""
    if one_run_curve(arm.kind, rule):
        return aurac(list(curve), list(curve.values()))
    return curve[arm.max_rank]
