"""Build what a trial trains: the base model, its tokenizer and the task, from the spec."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from rankstudy.adapters import attach_adapters
from rankstudy.core.arms import Arm
from rankstudy.core.errors import InputError
from rankstudy.core.spec import ModelSpec, StudySpec
from rankstudy.model.tiny import tiny_model
from rankstudy.model.tokenizer import byte_tokenizer, load_tokenizer
from rankstudy.tasks.base import Task


class LoadedModel(NamedTuple):
    model: nn.Module
    tokenizer: object
    # one-off set-up every later trial reuses (a GGUF file's dequantisation, or the wait for it)
    setup_seconds: float = 0.0


def model_folder(spec: ModelSpec) -> tuple[str, float]:
    """(what from_pretrained loads, seconds spent preparing it): the hub id or local path as
    given, or the dequantised folder of a GGUF file (made once per machine)."""
    if spec.gguf is None:
        return spec.name, 0.0
    from rankstudy.model.gguf import dequantized

    folder, seconds = dequantized(spec.gguf)
    return str(folder), seconds


def load_model(spec: ModelSpec, dtype: torch.dtype) -> LoadedModel:
    """A hub id, local path or GGUF file goes through AutoModelForCausalLM with the model's own
    tokenizer; a tiny config is built from its seed, with the local byte-level tokenizer."""
    seconds = 0.0
    if spec.tiny is not None:
        t = spec.tiny
        model = tiny_model(
            t.family,
            seed=t.seed,
            attn_implementation=spec.attn_implementation,
            hidden=t.hidden,
            layers=t.layers,
            heads=t.heads,
            intermediate=t.intermediate,
            vocab=t.vocab,
            max_positions=t.max_positions,
            initializer_range=t.initializer_range,
        )
        tokenizer = byte_tokenizer()
    else:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load fills the study's log
        name, seconds = model_folder(spec)
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=dtype,
            trust_remote_code=spec.trust_remote_code,
            attn_implementation=spec.attn_implementation,
        )
        tokenizer = load_tokenizer(name, spec.trust_remote_code)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LoadedModel(model.to(dtype), tokenizer, seconds)


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
            raise InputError("adapters.target_modules: the planted task needs a list of names")
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
