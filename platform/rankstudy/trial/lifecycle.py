"""One trial: one arm with one set of hyperparameters, trained in a DeepSpeed engine and
scored at every evaluation rank.

A `Trial` has a lifecycle, each part a short method over one typed progress: setup (model,
task, adapters, engine, the checkpoint to resume from), train_step (one optimizer step),
evaluate, checkpoint, finish (score and write result.json) and close. `run_trial(config)` is
the whole of it on one worker: the `rankstudy trial` command, each Ray Train worker, the
study's trial actors and the benchmarks all drive this one object. Workers split each global
batch and each evaluation set, so the results do not depend on how many there are; rank 0
writes result.json.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from rankstudy.adapters import adapters_off, get_schedule, set_rank
from rankstudy.core.arms import parse_arm, trial_rules
from rankstudy.core.cost import eval_flops, train_flops
from rankstudy.core.records import TrialConfig, TrialResult, write_result
from rankstudy.core.spec import StudySpec
from rankstudy.core.trial_request import Selection
from rankstudy.model.architecture import model_shape
from rankstudy.model.build import attach_arm, build_task, load_model
from rankstudy.model.devices import device_problem
from rankstudy.model.engine import build_engine, init_distributed, model_dtype, use_gpu
from rankstudy.storage.folders import publish_checkpoint, trial_storage
from rankstudy.trial.batches import example_order, total_steps
from rankstudy.trial.checkpoint import load_checkpoint, save_checkpoint
from rankstudy.trial.evaluation import Evaluation, evaluate, reduce, score_split
from rankstudy.trial.result import measured_validation, previous_result, trial_result


class TrialFailed(RuntimeError):
    """The trial cannot go on (a non-finite loss, say); the message says why."""


@dataclass
class TrialProgress:
    """What the trial has done and spent; saved in every checkpoint, so a resumed trial goes on
    from it and its cost counts what the killed run spent too."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_tokens: int = 0
    eval_tokens: int = 0
    # of the evaluation: each inference rule's seconds and tokens, so a method served under one
    # rule is not charged for the others a shared trial also scored
    eval_by_rule: dict[str, dict[str, float]] = field(default_factory=dict)
    resumed_from: list[int] = field(default_factory=list)
    # (step, Selection.tune()) of each validation told to the search's scheduler: a resumed
    # trial tells them again, so a study resumed after a kill rebuilds the scheduler's rungs
    # that Tune's last saved state missed
    told: list[list] = field(default_factory=list)
    shared_seconds: float = 0.0  # set-up later trials reuse (not this arm's cost)
    wall_seconds: float = 0.0  # of the runs before this one (a resume adds its own)


def lr_lambda(spec: StudySpec, steps: int):
    from transformers import get_scheduler

    t = spec.training
    name = "constant_with_warmup" if t.lr_schedule == "constant" else t.lr_schedule
    warmup = int(t.warmup_ratio * steps)
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_scheduler(name, dummy, num_warmup_steps=warmup, num_training_steps=steps)
    return schedule.lr_lambdas[0]


def method_loss(model, task, batch, arm) -> torch.Tensor:
    """One micro-batch's loss: the sum of the method's weighted forwards (methods.Method
    .loss_ranks), each the task's loss at a rank or the method's own training forward.
    model: an engine or a plain module."""
    schedule = get_schedule(model)
    terms = arm.kind.loss_ranks(schedule.ranks, schedule.sampled_rank)
    if terms == [(None, 1.0)]:  # one forward of the method's own p
        return task.loss(model, batch)
    total = 0.0
    for rank, weight in terms:
        set_rank(model, rank, "scaled")  # a training forward at rank k: s_k A_k B_k
        loss = task.loss(model, batch)
        total = total + (loss if weight == 1.0 else weight * loss)
    set_rank(model, None)
    return total


class Trial:
    """One arm trained and scored on this worker, as a TrialConfig asks."""

    def __init__(self, config: TrialConfig) -> None:
        self.invoked = time.perf_counter()  # the devices are held from here: set-up is cost
        self.config = config
        self.spec = config.spec
        self.arm = parse_arm(config.arm, self.spec)
        self.storage = trial_storage(config)
        self.out_dir = self.storage.local(config.out_dir)  # this node's copy of its folder
        self.engine = None
        self.progress = TrialProgress()

    # -- setup -------------------------------------------------------------------------------
    def setup(self, model=None, task=None, make_engine=None) -> Trial:
        """Build the model (or take `model`), its task (or `task`), the arm's adapters and the
        engine (`make_engine`, DeepSpeed's by default), then resume from the last checkpoint."""
        spec, arm = self.spec, self.arm
        self.gpu = use_gpu(spec)
        if problem := device_problem(spec):  # this node's GPUs, which the driver may not see
            raise TrialFailed(problem)
        self.rank, self.world = init_distributed(self.gpu)
        torch.set_num_threads(spec.resources.cpus_per_worker)
        dtype = model_dtype(spec, self.gpu)
        torch.manual_seed(spec.seed)
        setup_seconds, tokenizer = 0.0, None
        if model is None:
            model, tokenizer, setup_seconds = load_model(spec.model, torch.float32)
        if task is None:
            cache = self.config.cache_dir and self.storage.local(self.config.cache_dir)
            task = build_task(spec, model, tokenizer, arm, spec.seed, cache)
        task.synced_gpus = self.world > 1 and spec.deepspeed.zero_stage == 3
        self.task = task
        attach_arm(model, spec, arm)
        self.schedule = get_schedule(model)
        self.schedule.per_step_draws = True  # the loop draws (draw_rank), for every worker
        self.shape = model_shape(model)
        self.steps = total_steps(spec, task, self.world)
        lr = lr_lambda(spec, self.steps)
        make_engine = make_engine or build_engine
        self.engine = make_engine(model.to(dtype), spec, self.world, self.gpu, lr)[0]
        self.lengths = task.lengths("train")
        self.rules = trial_rules(spec, self.arm.name)
        self._resume(task.shared_seconds + setup_seconds)
        return self

    def _resume(self, setup_seconds: float) -> None:
        """Restore the last checkpoint, if any: an unreadable one raises CorruptCheckpoint (not
        TrialFailed), so Tune retries the trial from step 0."""
        self.ckpt_dir = self.out_dir / "checkpoints"
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # started on a node that lacks its files
            self.storage.pull_latest_checkpoint(self.out_dir)
        if self.world > 1:
            dist.barrier()
        loop = load_checkpoint(self.engine, self.ckpt_dir)
        p = self.progress = TrialProgress(**loop) if loop else TrialProgress()
        if (
            self.rank == 0
        ):  # which process trains this trial now (fault tests and operators kill it)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "trial.pid").write_text(str(os.getpid()))
            if p.step:
                print(f"[{self.arm.name}] resumed from step {p.step}", flush=True)
        if 0 < p.step < self.steps:
            p.resumed_from.append(p.step)
        p.shared_seconds += setup_seconds
        self.prior_wall = p.wall_seconds
        # The step of the last checkpoint, the same on every rank (DeepSpeed writes `latest` on
        # rank 0 alone: other nodes cannot read it off their disks).
        self.saved = p.step

    # -- training ----------------------------------------------------------------------------
    def train(self, validated: Callable[[int, Selection], None] | None = None) -> None:
        """Optimizer steps up to the budget, logging, validating and checkpointing on the spec's
        schedule; the last step is always checkpointed. `validated(step, selection)` hears of
        each validation before the end (its selection metrics), once the record the trial
        leaves if it ends there is written (stopped_here): a study's ASHA search reports it to
        Tune, whose scheduler may stop the trial in that call. A resumed trial first tells
        again what it told before its checkpoint."""
        t, p = self.spec.training, self.progress
        for step, keys in p.told if validated is not None else []:
            validated(step, Selection.of_tune(keys))
        self.engine.train()
        started, first = time.perf_counter(), p.step
        while p.step < self.steps:
            loss = self.train_step()
            if self.rank == 0 and (p.step % t.log_every == 0 or p.step == self.steps):
                self._log(loss, (p.step - first) / (time.perf_counter() - started))
            if t.eval_every and p.step % t.eval_every == 0 and p.step < self.steps:
                scores = self.evaluate("validation", self.rules[:1])  # what the search reads
                p.validation.append(
                    {"step": p.step, "scores": scores.scores["score"][self.rules[0]]}
                )
                if validated is not None:
                    selection = self.stopped_here(scores).selection()
                    p.told.append([p.step, selection.tune()])
                    validated(p.step, selection)
            if t.checkpoint_every and p.step % t.checkpoint_every == 0:
                self.checkpoint()
        if self.saved != p.step:
            self.checkpoint()

    def train_step(self) -> float:
        """One optimizer step on the next global batch (this worker's micro-batches of it);
        returns the step's mean loss over every worker."""
        t, p, engine = self.spec.training, self.progress, self.engine
        micro, accum, world = t.micro_batch_size, t.grad_accum, self.world
        tic = time.perf_counter()
        global_batch = micro * accum * world
        n = self.task.size("train")
        order = example_order(
            n, self.spec.seed, p.step * global_batch, global_batch, self.lengths, global_batch
        )
        step_loss, step_tokens = 0.0, 0
        for m in range(accum):
            self.draw_rank(m)
            lo = (m * world + self.rank) * micro
            batch = self.task.collate("train", order[lo : lo + micro])
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            if "teacher_logits" in batch:
                batch["teacher_logits"] = batch["teacher_logits"].float()
            loss = method_loss(engine, self.task, batch, self.arm)
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / accum
            step_tokens += int(batch["input_ids"].numel())
        step_loss = reduce(step_loss) / world
        self._check_finite(step_loss, p.step + 1)
        p.train_tokens += int(reduce(step_tokens))
        p.losses.append(step_loss)
        p.train_seconds += time.perf_counter() - tic
        p.step += 1
        return step_loss

    def draw_rank(self, micro_batch: int) -> None:
        """A drawing method's b (adapters.rank_draw): one draw at the step's first micro-batch,
        or one at every micro-batch, as the reference code draws at every forward. Every
        worker draws from the same seeded generator in the same order, so a worker's k-th
        micro-batch trains the same b as every other worker's k-th. That matches the
        reference's DDP processes: each seeds Python's global `random` alike (set_seed) and
        draws b with random.randint in compute_loss, once a forward, so they draw the same
        sequence too (unless something else takes from that generator on some process only).
        The generator's state is in every checkpoint: a resumed trial draws on exactly."""
        if not self.arm.kind.draws_rank:
            return
        if micro_batch == 0 or self.spec.adapters.rank_draw == "micro_batch":
            self.schedule.resample()

    def _check_finite(self, loss: float, step: int) -> None:
        lr = self.spec.training.lr
        if not math.isfinite(loss):
            raise TrialFailed(
                f"loss is {loss} at step {step}: the trial diverged (lr {lr}); stopping it"
            )
        # Without fp16 loss scaling, a step DeepSpeed skipped for overflow had non-finite
        # gradients: it will not recover, and silently skipped steps would fake the budget.
        if self.engine.skipped_steps:
            raise TrialFailed(
                f"gradients are non-finite at step {step} (DeepSpeed skipped the update; "
                f"lr {lr}); stopping it"
            )

    def _log(self, loss: float, steps_per_second: float) -> None:
        p = self.progress
        tok_s = p.train_tokens / max(p.train_seconds, 1e-9)
        print(
            f"[{self.arm.name}] step {p.step}/{self.steps} loss {loss:.4f} "
            f"lr {self.engine.get_lr()[0]:.2e} {tok_s:,.0f} tok/s "
            f"eta {(self.steps - p.step) / steps_per_second:.0f}s",
            flush=True,
        )

    # -- evaluation and checkpoints -----------------------------------------------------------
    def evaluate(self, split: str, rules: list[str] | None = None) -> Evaluation:
        """Every evaluation rank under every rule (or the given ones), its seconds and tokens
        added to the cost. A validation mid-training scores the trial's own rule alone: the
        search compares trials by it, and the other rules choose among finished trials only."""
        start = time.perf_counter()
        batch, rules = self.spec.training.eval_batch_size, rules or self.rules
        scores = evaluate(self.engine.module, self.task, split, self.arm, rules, batch)
        evaluated = sum(len(curve) for curve in scores.scores["score"].values())  # (rule, rank)
        self._spent_on_eval(split, evaluated, start)
        per_example = self.task.size(split) * self.task.tokens_per_example(split)
        for rule, curve in scores.scores["score"].items():
            spent = self.progress.eval_by_rule.setdefault(rule, {"seconds": 0.0, "tokens": 0})
            spent["seconds"] += scores.seconds[rule]
            spent["tokens"] += per_example * len(curve)
        return scores

    def evaluate_base(self, split: str) -> dict[str, float]:
        """The base model alone (adapters off): the baseline every rank improves on."""
        start = time.perf_counter()
        model = self.engine.module
        with adapters_off(model):
            scores = score_split(model, self.task, split, self.spec.training.eval_batch_size)
        self._spent_on_eval(split, 1, start)
        return scores

    def _spent_on_eval(self, split: str, evaluated: int, start: float) -> None:
        p = self.progress
        p.eval_seconds += time.perf_counter() - start
        p.eval_tokens += self.task.size(split) * evaluated * self.task.tokens_per_example(split)

    def checkpoint(self) -> None:
        p = self.progress
        self.saved = p.step
        p.wall_seconds = self.wall()
        save_checkpoint(self.engine, self.ckpt_dir, p.step, asdict(p))
        publish_checkpoint(self.storage, self.ckpt_dir, p.step, self.rank, self.world)

    def wall(self) -> float:
        return self.prior_wall + time.perf_counter() - self.invoked

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> TrialResult:
        """Score the splits the config asks for and write result.json (rank 0)."""
        p, config = self.progress, self.config
        splits = config.splits
        previous = previous_result(self.out_dir) if "validation" not in splits else None
        if previous is not None:  # a test pass after a validation-only run: keep what it measured
            validation = measured_validation(previous)
            p.eval_seconds = previous.cost.eval_seconds
            p.eval_tokens = previous.cost.eval_tokens
            p.eval_by_rule = {
                rule: {"seconds": c.seconds, "tokens": c.tokens}
                for rule, c in previous.cost.eval_by_rule.items()
            }
            self.prior_wall = previous.cost.wall_seconds
        else:
            validation = self.evaluate("validation")
        test = self.evaluate("test") if "test" in splits else None
        # the base model's test scores: the study asks one test pass for them
        base = self.evaluate_base("test") if config.score_base and test else None
        result = self._result(validation, test)
        result.base_scores = base
        if self.rank == 0:
            self.storage.push(write_result(result, self.out_dir))
        return result

    def stopped_here(self, validation: Evaluation) -> TrialResult:
        """result.json as the trial stands at a validation mid-training, status "stopped",
        written before anyone hears of that validation: if the search's scheduler stops the
        trial there, this is its record, its cost everything it spent; a trial that goes on
        overwrites it at its end."""
        result = self._result(validation, None)
        result.status = "stopped"
        if self.rank == 0:
            self.storage.push(write_result(result, self.out_dir))
        return result

    def _result(self, validation: Evaluation, test: Evaluation | None) -> TrialResult:
        self.progress.wall_seconds = self.wall()
        return trial_result(
            self.spec,
            self.arm,
            self.config,
            self.task,
            validation,
            test,
            asdict(self.progress),
            self.world,
            self.gpu,
            self.flops(),
        )

    def flops(self) -> dict:
        """The cost model's training and evaluation FLOPs of what the trial ran."""
        p, arm = self.progress, self.arm
        lengths = self.lengths
        seq_len = (
            statistics.mean(lengths)
            if lengths
            else self.task.collate("train", [0])["input_ids"].shape[1]
        )
        by_rule = {
            rule: eval_flops(
                self.shape, spent["tokens"], seq_len, [statistics.mean(arm.ranks_for(rule))]
            )
            for rule, spent in p.eval_by_rule.items()
        }
        rest = p.eval_tokens - sum(spent["tokens"] for spent in p.eval_by_rule.values())
        return {
            "train": train_flops(
                self.shape, p.train_tokens, seq_len, arm.method, arm.max_rank, arm.train_ranks
            ),
            # each rule's scoring at its own ranks, and the rest (the base model's scoring)
            "eval": sum(by_rule.values())
            + eval_flops(self.shape, rest, seq_len, [statistics.mean(arm.eval_ranks)]),
            "eval_by_rule": by_rule,
        }

    def close(self) -> None:
        """Free the model: DeepSpeed keeps global references to an engine's parameters until it
        is destroyed, and a reused trial actor would otherwise hold every earlier trial's."""
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None
        gc.collect()
        release_freed_memory()


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it): a reused trial actor's
    resident memory otherwise climbs with each trial of a real model (7 to 9 GB an actor in
    the SmolLM2 study) until the machine runs out."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_trial(
    config: TrialConfig | dict, validated: Callable[[int, Selection], None] | None = None
) -> TrialResult:
    """The whole trial on this worker (config: a TrialConfig, or the dict TrialConfig.of
    reads); returns what it wrote to result.json. validated: as Trial.train takes it."""
    trial = Trial(TrialConfig.of(config))
    try:
        trial.setup()
        trial.train(validated)
        return trial.finish()
    finally:
        trial.close()
