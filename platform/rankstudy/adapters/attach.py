"""Put NestedLoRA layers into any transformers model, switch its rank, find its adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from rankstudy.adapters.layer import A_INITS, ADAPTABLE, NestedLoRA
from rankstudy.adapters.schedules import RankSchedule
from rankstudy.adapters.svd import set_svd_rank
from rankstudy.core.methods import INFERENCE_RULES
from rankstudy.core.ranks import check_choice, powers_of_two
from rankstudy.core.targets import Targets, match_targets


def adapted_modules(model: nn.Module, target_modules: Targets) -> dict[str, nn.Module]:
    """The linear modules that target_modules adapt, by name (rankstudy.core.targets' rule)."""
    linear_names = [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE)]
    return {n: model.get_submodule(n) for n in match_targets(linear_names, target_modules)}


def adapter_layers(model: nn.Module) -> dict[str, NestedLoRA]:
    """Every NestedLoRA in the model, by the name of the module it replaced."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NestedLoRA)}


def get_schedule(model: nn.Module) -> RankSchedule:
    """The schedule shared by the model's adapters."""
    for m in model.modules():
        if isinstance(m, NestedLoRA):
            return m.schedule
    raise ValueError("model: has no rankstudy adapters; call attach_adapters first")


def _resample_draw(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook on the model: a training forward draws its rank (DyLoRA's b) once, for
    all layers."""
    schedule = get_schedule(module)
    if module.training and schedule.rank is None and not schedule.per_step_draws:
        schedule.resample()


def attach_adapters(
    model: nn.Module,
    method: str,
    max_rank: int,
    train_ranks: Iterable[int] | None = None,
    target_modules: Targets = ("q_proj", "v_proj"),
    scaling: str = "sqrt",
    alpha: float = 1.0,
    dropout: float = 0.0,
    inference_rule: str = "scaled",
    a_init: str = "peft",
    seed: int = 0,
) -> nn.Module:
    """Freeze the model and wrap every matched linear layer in a NestedLoRA, in place.

    method: a name in rankstudy.core.methods (lora trains rank max_rank); train_ranks is the
    rank set S (default: powers of two up to max_rank; ignored by lora). seed fixes A's
    initialisation and DyLoRA's draws of b. Returns the model.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank <= 0:
        raise ValueError(f"max_rank: must be a positive integer, got {max_rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
    check_choice("a_init", a_init, A_INITS)
    if adapter_layers(model):
        raise ValueError("model: already has rankstudy adapters")
    schedule = RankSchedule(
        method=method,
        max_rank=max_rank,
        train_ranks=tuple(powers_of_two(max_rank) if train_ranks is None else train_ranks),
        scaling=scaling,
        alpha=alpha,
        inference_rule=inference_rule,
        seed=seed,
    )
    matched = list(adapted_modules(model, target_modules))

    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name in matched:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        layer = NestedLoRA(base, schedule, dropout=dropout, a_init=a_init, generator=generator)
        setattr(parent, child, layer)
    if schedule.kind.draws_rank:
        model.register_forward_pre_hook(_resample_draw)
    return model


def set_rank(model: nn.Module, k: int | None, rule: str | None = None) -> None:
    """k: evaluate (or train, as nested_multiloss does) every adapter at rank k; None: the
    method's own training behaviour. rule overrides the schedule's inference rule."""
    schedule = get_schedule(model)
    if k is not None:
        schedule.check_rank(k)
    if rule is not None:
        schedule.inference_rule = check_choice("rule", rule, INFERENCE_RULES)
    schedule.rank = k
    if schedule.serves_svd():
        set_svd_rank(adapter_layers(model), k, schedule.inference_rule)


@contextlib.contextmanager
def adapters_off(model: nn.Module):
    """The base model alone while inside (its score is the baseline every rank improves on)."""
    schedule = get_schedule(model)
    schedule.disabled = True
    try:
        yield model
    finally:
        schedule.disabled = False
