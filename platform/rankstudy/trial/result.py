"""A trial's result (rankstudy.core.records.TrialResult, its result.json) built from what it
measured, and read back by a test pass that keeps its validation scores."""

from __future__ import annotations

import resource
from pathlib import Path

import torch
import torch.distributed as dist

from rankstudy.core.aurac import aurac
from rankstudy.core.records import EXAMPLE_DIGITS, RESULT_FILE, TrialResult, read_result
from rankstudy.trial.evaluation import Evaluation, reduce, selection_metric


def peak_memory(gpu: bool) -> int:
    if gpu:
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def previous_result(out_dir: Path) -> TrialResult | None:
    path = out_dir / RESULT_FILE
    return read_result(path) if path.is_file() else None


def measured_validation(result: TrialResult) -> Evaluation:
    """evaluate()'s validation scores back from a result.json."""
    scores = {"score": result.validation_scores_by_rule, **result.validation_extra_scores}
    return Evaluation(scores, result.examples.get("validation", {}))


def _compact(splits: dict[str, Evaluation | None]) -> dict:
    """Each scored example of each split, rounded to EXAMPLE_DIGITS: result.json stays small."""
    return {
        split: {
            metric: {
                rule: {k: [round(x, EXAMPLE_DIGITS) for x in v] for k, v in curves.items()}
                for rule, curves in by_rule.items()
            }
            for metric, by_rule in scored.examples.items()
        }
        for split, scored in splits.items()
        if scored is not None
    }


def trial_result(
    spec,
    arm,
    config,
    task,
    validation: Evaluation,
    test: Evaluation | None,
    state,
    world,
    gpu,
    flops,
) -> TrialResult:
    """result.json. validation and test: evaluate()'s scores (the record keys ranks as it
    writes them); test is None for a validation-only run: scores and aurac stay empty."""
    examples = _compact({"validation": validation, "test": test})
    validation, test = validation.scores, (test.scores if test is not None else {})
    extra_validation = {m: v for m, v in validation.items() if m != "score"}
    extra_test = {m: v for m, v in test.items() if m != "score"}
    validation = validation["score"]
    test = test.get("score", {})
    primary = next(iter(validation))
    curve = test.get(primary, {})
    reference = task.reference_curve(spec.adapters.evaluation_ranks)
    result = {
        "arm": arm.name,
        "method": arm.method,
        "max_rank": arm.max_rank,
        "train_ranks": list(arm.train_ranks),
        "seed": spec.seed,
        "hparams": {
            "lr": spec.training.lr,
            "weight_decay": spec.training.weight_decay,
            "overrides": list(config.overrides),
        },
        "inference_rule": primary,
        "metric": task.metric,  # what `scores` measure
        "scores": curve,
        "validation_scores": validation[primary],
        "scores_by_rule": test,
        "validation_scores_by_rule": validation,
        "extra_scores": extra_test,
        "validation_extra_scores": extra_validation,
        "selection_metric": selection_metric(arm, validation[primary], primary),
        "selection_metric_by_rule": {r: selection_metric(arm, c, r) for r, c in validation.items()},
        "aurac": {
            "log2": aurac(list(curve), list(curve.values())),
            "linear": aurac(list(curve), list(curve.values()), "linear"),
        }
        if curve
        else {},
        "loss_curve": state["losses"],
        "validation_curve": state["validation"],
        "steps": state["step"],
        "resumed_from": state.get("resumed_from", []),
        "cost": trial_cost(state, world, gpu, flops),
        "examples": examples,
    }
    if reference is not None:
        result["reference"] = reference
    return TrialResult.model_validate(result)


def trial_cost(state: dict, world: int, gpu: bool, flops: dict) -> dict:
    """What the trial spent: seconds, device-seconds, tokens, the cost model's FLOPs, peak
    memory (the largest of its workers')."""
    return {
        "train_seconds": state["train_seconds"],
        "eval_seconds": state["eval_seconds"],
        "wall_seconds": state["wall_seconds"],
        # the devices held for this trial, less the one-off set-up later trials reuse
        "shared_setup_seconds": state["shared_seconds"],
        "device_seconds": (state["wall_seconds"] - state["shared_seconds"]) * world,
        "devices": world,
        "device_type": "gpu" if gpu else "cpu",
        "train_tokens": state["train_tokens"],
        "eval_tokens": state["eval_tokens"],
        "eval_by_rule": {
            rule: spent | {"flops": flops["eval_by_rule"][rule]}
            for rule, spent in state["eval_by_rule"].items()
        },
        "flops": flops["train"] + flops["eval"],
        "train_flops": flops["train"],  # of it: training (throughput is measured on it)
        "peak_memory_bytes": int(reduce(peak_memory(gpu), dist.ReduceOp.MAX)),
    }
