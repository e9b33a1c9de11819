"""One trial: one arm with one set of hyperparameters, trained in a DeepSpeed engine and
scored at every evaluation rank.

`run_trial(config)` is the whole trial on one worker. It runs as one process (the
`rankstudy trial` command) or as a Ray Train `train_loop_per_worker` on several; workers
split each global batch and each evaluation set, so the results do not depend on how many
there are. Rank 0 writes result.json.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import math
import os
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rankstudy.adapters import adapters_off, get_schedule, set_rank
from rankstudy.arms import TWO_RULES, Arm, parse_arm
from rankstudy.build import attach_arm, build_task, load_model
from rankstudy.checkpoint import load_checkpoint, save_checkpoint
from rankstudy.cost import eval_flops, model_shape, train_flops
from rankstudy.engine import build_engine, init_distributed, precision, use_gpu
from rankstudy.metrics import aurac
from rankstudy.records import RESULT_FILE, ByRule, TrialResult, read_result, write_result
from rankstudy.spec import StudySpec, parse_spec
from rankstudy.storage import publish_checkpoint, trial_storage
from rankstudy.tasks.base import Task


class TrialFailed(RuntimeError):
    """The trial cannot go on (a non-finite loss, say); the message says why."""


def total_steps(spec: StudySpec, task: Task, world: int) -> int:
    t = spec.training
    if t.steps is not None:
        return t.steps
    global_batch = t.micro_batch_size * t.grad_accum * world
    return max(1, math.ceil(t.epochs * task.size("train") / global_batch))


def example_order(
    n: int, seed: int, start: int, count: int, lengths: list[int] | None = None, batch: int = 1
) -> list[int]:
    """Positions start..start+count of an endless stream of seeded per-epoch orders. With
    `lengths`, each epoch's permutation is bucketed: within windows of BUCKET_WINDOW batches
    the examples are sorted by length and cut into batches of `batch`, and the batches are
    shuffled, so a batch holds similar lengths and little compute goes to padding."""
    key = tuple(lengths) if lengths else None
    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n)
        out.append(_epoch_order(n, seed, epoch, key, batch)[i])
    return out


BUCKET_WINDOW = 32  # batches sorted together: wider pads less, narrower mixes lengths more


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, lengths: tuple | None, batch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    perm = torch.randperm(n, generator=generator).tolist()
    if lengths is None:
        return perm
    out, width = [], batch * BUCKET_WINDOW
    for lo in range(0, n, width):
        window = sorted(perm[lo : lo + width], key=lambda i: lengths[i])
        batches = [window[j : j + batch] for j in range(0, len(window), batch)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            out.extend(batches[b])
    return out


def lr_lambda(spec: StudySpec, steps: int):
    from transformers import get_scheduler

    t = spec.training
    name = "constant_with_warmup" if t.lr_schedule == "constant" else t.lr_schedule
    warmup = int(t.warmup_ratio * steps)
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_scheduler(name, dummy, num_warmup_steps=warmup, num_training_steps=steps)
    return schedule.lr_lambdas[0]


def reduce(value: float, op=dist.ReduceOp.SUM) -> float:
    """All-reduce one number across the trial's workers (on the GPU under nccl)."""
    device = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.item()


def evaluate(
    model,
    task: Task,
    split: str,
    arm: Arm,
    rules: list[str],
    batch_size: int,
) -> dict[str, dict[str, dict[int, float]]]:
    """{metric: {rule: {rank: score}}} on the split, "score" being the task's primary metric;
    every worker scores its shard, then all reduce."""
    scores: dict[str, dict[str, dict[int, float]]] = {}
    # Only the methods with a trained p have a second rule; LoRA at its own rank has one.
    for rule in rules if arm.method in TWO_RULES else rules[:1]:
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
    """Validation AURAC (log2) for nested arms; the score at its own rank for LoRA."""
    if arm.nested:
        return aurac(list(curve), list(curve.values()))
    return curve[arm.max_rank]


def peak_memory(gpu: bool) -> int:
    if gpu:
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_trial(config: dict) -> dict:
    """config: {"spec": dict, "arm": str, "out_dir": str, "overrides": [key=value, ...]}."""
    engines: list = []
    try:
        return _run_trial(config, engines)
    finally:
        # DeepSpeed keeps global references to an engine's parameters until it is destroyed:
        # a reused trial actor would otherwise hold every earlier trial's model.
        for engine in engines:
            engine.destroy()
        gc.collect()
        release_freed_memory()


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it): a reused trial actor's
    resident memory otherwise climbs with each trial of a real model (7 to 9 GB an actor in
    the SmolLM2 study) until the machine runs out."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _run_trial(config: dict, engines: list) -> dict:
    invoked = time.perf_counter()  # the devices are held from here: set-up counts as cost
    spec = parse_spec(config["spec"], config.get("overrides", ()))
    arm = parse_arm(config["arm"], spec)
    storage = trial_storage(config)
    out_dir = storage.local(config["out_dir"])  # this node's working copy of the trial's folder
    gpu = use_gpu(spec)
    rank, world = init_distributed(gpu)
    torch.set_num_threads(spec.resources.cpus_per_worker)
    dtype = torch.bfloat16 if precision(spec, gpu) == "bf16" else torch.float32
    torch.manual_seed(spec.seed)

    model, tokenizer, model_setup = load_model(spec.model, torch.float32)
    cache = config.get("cache_dir")
    task = build_task(spec, model, tokenizer, arm, spec.seed, cache and storage.local(cache))
    task.synced_gpus = world > 1 and spec.deepspeed.zero_stage == 3
    a, t = spec.adapters, spec.training
    attach_arm(model, spec, arm)
    schedule = get_schedule(model)
    schedule.per_step_draws = True  # one DyLoRA b per optimizer step, for every worker
    shape = model_shape(model)
    steps = total_steps(spec, task, world)
    engine, _, _ = build_engine(model.to(dtype), spec, world, gpu, lr_lambda(spec, steps))
    engines.append(engine)
    device = engine.device

    ckpt_dir = out_dir / "checkpoints"
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # started on a node that lacks its files
        storage.pull_latest_checkpoint(out_dir)
    if world > 1:
        dist.barrier()
    # an unreadable checkpoint raises CorruptCheckpoint (not TrialFailed): Tune retries the trial
    state = load_checkpoint(engine, ckpt_dir) or {
        "step": 0,
        "losses": [],
        "validation": [],
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "train_tokens": 0,
        "eval_tokens": 0,
    }
    if rank == 0:  # which process trains this trial now (fault tests and operators kill it)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "trial.pid").write_text(str(os.getpid()))
    if state["step"] and rank == 0:
        print(f"[{arm.name}] resumed from step {state['step']}", flush=True)
    if 0 < state["step"] < steps:
        state.setdefault("resumed_from", []).append(state["step"])
    state["shared_seconds"] = state.get("shared_seconds", 0.0) + task.shared_seconds + model_setup
    prior_wall = state.get("wall_seconds", 0.0)

    def wall() -> float:
        return prior_wall + time.perf_counter() - invoked

    # The step of the last checkpoint, the same on every rank (DeepSpeed writes `latest` on
    # rank 0 alone: other nodes cannot read it off their disks).
    saved = state["step"]

    def checkpoint() -> None:
        nonlocal saved
        saved = state["step"]
        state["wall_seconds"] = wall()
        save_checkpoint(engine, ckpt_dir, state["step"], state)
        publish_checkpoint(storage, ckpt_dir, state["step"], rank, world)

    micro, accum = t.micro_batch_size, t.grad_accum
    global_batch = micro * accum * world
    n_train = task.size("train")
    rules = list(a.inference_rules)
    lengths = task.lengths("train")

    def scored(split: str, base: bool = False):
        """evaluate() (or the base model's scores), its seconds and tokens added to the cost."""
        start = time.perf_counter()
        if base:
            with adapters_off(engine.module):
                scores = score_split(engine.module, task, split, t.eval_batch_size)
            evaluated = 1
        else:
            scores = evaluate(engine.module, task, split, arm, rules, t.eval_batch_size)
            evaluated = sum(len(curve) for curve in scores["score"].values())  # (rule, rank)
        state["eval_seconds"] += time.perf_counter() - start
        state["eval_tokens"] += task.size(split) * evaluated * task.tokens_per_example(split)
        return scores

    engine.train()
    run_start = time.perf_counter()
    step_start = state["step"]
    while state["step"] < steps:
        step = state["step"]
        tic = time.perf_counter()
        order = example_order(
            n_train, spec.seed, step * global_batch, global_batch, lengths, global_batch
        )
        step_loss, step_tokens = 0.0, 0
        if arm.method == "dylora":
            schedule.resample()
        for m in range(accum):
            lo = (m * world + rank) * micro
            batch = {
                k: v.to(device) for k, v in task.collate("train", order[lo : lo + micro]).items()
            }
            if "teacher_logits" in batch:
                batch["teacher_logits"] = batch["teacher_logits"].float()
            loss = arm_loss(engine, task, batch, arm)
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / accum
            step_tokens += int(batch["input_ids"].numel())
        step_loss = reduce(step_loss) / world
        if not math.isfinite(step_loss):
            raise TrialFailed(
                f"loss is {step_loss} at step {step + 1}: the trial diverged "
                f"(lr {t.lr}); stopping it"
            )
        # Without fp16 loss scaling, a step DeepSpeed skipped for overflow had non-finite
        # gradients: it will not recover, and silently skipped steps would fake the budget.
        if engine.skipped_steps:
            raise TrialFailed(
                f"gradients are non-finite at step {step + 1} (DeepSpeed skipped the update; "
                f"lr {t.lr}); stopping it"
            )
        state["train_tokens"] += int(reduce(step_tokens))
        state["losses"].append(step_loss)
        state["train_seconds"] += time.perf_counter() - tic
        state["step"] = step + 1
        if rank == 0 and (state["step"] % t.log_every == 0 or state["step"] == steps):
            done = state["step"] - step_start
            rate = done / (time.perf_counter() - run_start)
            tok_s = state["train_tokens"] / max(state["train_seconds"], 1e-9)
            print(
                f"[{arm.name}] step {state['step']}/{steps} loss {step_loss:.4f} "
                f"lr {engine.get_lr()[0]:.2e} {tok_s:,.0f} tok/s "
                f"eta {(steps - state['step']) / rate:.0f}s",
                flush=True,
            )
        if t.eval_every and state["step"] % t.eval_every == 0 and state["step"] < steps:
            curve = scored("validation")["score"][rules[0]]
            state["validation"].append({"step": state["step"], "scores": curve})
        if t.checkpoint_every and state["step"] % t.checkpoint_every == 0:
            checkpoint()

    if saved != state["step"]:
        checkpoint()

    splits = config.get("splits", SPLITS)
    previous = _previous_result(out_dir) if "validation" not in splits else None
    if previous is not None:  # a test pass after a validation-only run: keep what it measured
        validation = _measured(previous, "validation_scores_by_rule", "validation_extra_scores")
        state["eval_seconds"] = previous.cost.eval_seconds
        state["eval_tokens"] = previous.cost.eval_tokens
        prior_wall = previous.cost.wall_seconds
    else:
        validation = scored("validation")
    test = scored("test") if "test" in splits else None
    base = None
    if config.get("score_base") and "test" in splits:  # the study asks one test pass for it
        base = scored("test", base=True)
    seq_len = (
        statistics.mean(lengths) if lengths else task.collate("train", [0])["input_ids"].shape[1]
    )
    flops = {
        "train": train_flops(
            shape, state["train_tokens"], seq_len, arm.method, arm.max_rank, arm.train_ranks
        ),
        "eval": eval_flops(shape, state["eval_tokens"], seq_len, [statistics.mean(arm.eval_ranks)]),
    }
    state["wall_seconds"] = wall()
    result = trial_result(spec, arm, config, task, validation, test, state, world, gpu, flops)
    result.base_scores = base
    if rank == 0:
        storage.push(write_result(result, out_dir))
    return result.wire()


# What a trial evaluates at its end: the study's search trials stop at validation, and only
# each arm's chosen trial is scored on test, by running the trial again with splits=("test",).
SPLITS = ("validation", "test")


def _previous_result(out_dir: Path) -> TrialResult | None:
    path = out_dir / RESULT_FILE
    return read_result(path) if path.is_file() else None


def _measured(result: TrialResult, primary: str, extra: str) -> dict[str, ByRule]:
    """evaluate()'s {metric: {rule: {rank: score}}} back from a result.json."""
    return {"score": getattr(result, primary), **getattr(result, extra)}


def arm_loss(model, task: Task, batch, arm: Arm) -> torch.Tensor:
    """One micro-batch's loss: the task's, or for nested_multiloss the nested objective taken
    literally, the sum over r in S of the loss at rank r. model: an engine or a plain module."""
    if arm.method != "nested_multiloss":
        return task.loss(model, batch)
    total = 0.0
    for r in arm.train_ranks:
        set_rank(model, r)
        total = total + task.loss(model, batch)
    set_rank(model, None)
    return total


def _keyed(curve: dict[int, float]) -> dict[str, float]:
    return {str(k): v for k, v in curve.items()}


def _keyed_metrics(scores: dict[str, dict[str, dict[int, float]]]) -> dict:
    return {m: {r: _keyed(c) for r, c in by_rule.items()} for m, by_rule in scores.items()}


def trial_result(
    spec, arm, config, task, validation, test, state, world, gpu, flops
) -> TrialResult:
    """result.json. validation and test: evaluate()'s {metric: {rule: {rank: score}}}; test is
    None for a validation-only run: scores and aurac stay empty."""
    extra_validation = {m: v for m, v in validation.items() if m != "score"}
    extra_test = {m: v for m, v in (test or {}).items() if m != "score"}
    validation = validation["score"]
    test = (test or {}).get("score", {})
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
            "overrides": list(config.get("overrides", ())),
        },
        "inference_rule": primary,
        "metric": task.metric,  # what `scores` measure
        "scores": _keyed(curve),
        "validation_scores": _keyed(validation[primary]),
        "scores_by_rule": {r: _keyed(c) for r, c in test.items()},
        "validation_scores_by_rule": {r: _keyed(c) for r, c in validation.items()},
        "extra_scores": _keyed_metrics(extra_test),
        "validation_extra_scores": _keyed_metrics(extra_validation),
        "selection_metric": selection_metric(arm, validation[primary]),
        "selection_metric_by_rule": {r: selection_metric(arm, c) for r, c in validation.items()},
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
        "cost": {
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
            "flops": flops["train"] + flops["eval"],
            "train_flops": flops["train"],  # of it: training (throughput is measured on it)
            "peak_memory_bytes": int(reduce(peak_memory(gpu), dist.ReduceOp.MAX)),
        },
    }
    if reference is not None:
        result["reference"] = _keyed(reference)
    return TrialResult.model_validate(result)
