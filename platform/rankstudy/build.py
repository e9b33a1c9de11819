"""Build what a trial trains: the base model, its tokenizer and the task, from the spec."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from rankstudy.adapters import attach_adapters
from rankstudy.arms import Arm
from rankstudy.models import tiny_model
from rankstudy.spec import ModelSpec, StudySpec
from rankstudy.tasks.base import Task
from rankstudy.tokenizer import byte_tokenizer, load_tokenizer


def load_model(spec: ModelSpec, dtype: torch.dtype) -> tuple[nn.Module, object | None]:
    """(model, tokenizer). A hub id or local path goes through AutoModelForCausalLM; a tiny
    config is built from its seed, with the local byte-level tokenizer."""
    if spec.tiny is not None:
        t = spec.tiny
        model = tiny_model(
            t.family,
            seed=t.seed,
            hidden=t.hidden,
            layers=t.layers,
            heads=t.heads,
            intermediate=t.intermediate,
            vocab=t.vocab,
            initializer_range=t.initializer_range,
        )
        model.config._attn_implementation = spec.attn_implementation
        tokenizer = byte_tokenizer()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            spec.name,
            dtype=dtype,
            trust_remote_code=spec.trust_remote_code,
            attn_implementation=spec.attn_implementation,
        )
        tokenizer = load_tokenizer(spec.name, spec.trust_remote_code)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(dtype), tokenizer


_PLANTED: dict[str, Task] = {}


def build_task(
    spec: StudySpec, model: nn.Module, tokenizer, arm: Arm, seed: int, cache_dir: str | None = None
) -> Task:
    """The task bound to the base model; call before adapters are attached."""
    task = spec.task
    if task.kind == "planted":
        from rankstudy.tasks.planted import PlantedTask

        targets = spec.adapters.target_modules
        if isinstance(targets, str):
            raise ValueError("adapters.target_modules: the planted task needs a list of names")
        ranks = sorted({*arm.eval_ranks, *spec.adapters.evaluation_ranks})
        # A reused trial process (Tune reuses actors) builds the same teacher only once.
        identity = json.dumps([spec.model.model_dump(), task.model_dump(), targets, seed])
        key = identity + json.dumps(ranks)
        if key not in _PLANTED:
            _PLANTED.clear()
            digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
            cache = Path(cache_dir) / f"planted-{digest}.json" if cache_dir else None
            _PLANTED[key] = PlantedTask(
                model, task, targets, reference_ranks=ranks, seed=seed, cache=cache
            )
        else:
            _PLANTED[key].shared_seconds = 0.0  # built by an earlier trial: nothing spent now
        return _PLANTED[key]
    if task.kind == "gsm8k":
        from rankstudy.tasks.gsm8k import GSM8KTask

        return GSM8KTask.from_spec(task, tokenizer, seed=seed)
    from rankstudy.tasks.jsonl import JsonlTask

    return JsonlTask.from_spec(task, tokenizer, seed=seed)


def attach_arm(model: nn.Module, spec: StudySpec, arm: Arm) -> nn.Module:
    """Attach the arm's adapters with every adapter setting of the spec; returns the model."""
    a = spec.adapters
    return attach_adapters(
        model,
        arm.method,
        arm.max_rank,
        arm.train_ranks,
        target_modules=a.target_modules,
        scaling=a.scaling,
        alpha=a.alpha,
        dropout=a.dropout,
        inference_rule=a.inference_rules[0],
        a_init=a.a_init,
        seed=spec.seed,
    )
