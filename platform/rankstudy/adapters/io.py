"""Adapters on disk: the full-rank state as safetensors with its metadata, and any rank-k
truncation as a standard PEFT LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rankstudy.adapters.attach import adapter_layers, attach_adapters, get_schedule
from rankstudy.adapters.layer import Conv1D
from rankstudy.adapters.svd import prepare_svd, served_ranks
from rankstudy.core.methods import SVD_RULES

ADAPTER_FILE = "adapters.safetensors"
FORMAT_VERSION = "1"


def adapter_metadata(model: nn.Module) -> dict:
    """Everything needed to rebuild the adapters on a fresh copy of the base model."""
    s = get_schedule(model)
    layers = adapter_layers(model)
    first = next(iter(layers.values()))
    return {
        "method": s.method,
        "max_rank": s.max_rank,
        "train_ranks": list(s.train_ranks),
        "scaling": s.scaling,
        "alpha": s.alpha,
        "inference_rule": s.inference_rule,
        "seed": s.seed,
        "dropout": first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0,
        "targets": list(layers),
    }


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors, keyed '<module>.lora_A' / '<module>.lora_B', on the CPU."""
    state = {}
    for name, layer in adapter_layers(model).items():
        state[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
        state[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
    return state


def save_adapters(model: nn.Module, path: str | Path) -> Path:
    """Write the full-rank adapters (safetensors, metadata in its header). path: file or dir."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / ADAPTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"rankstudy": json.dumps(adapter_metadata(model)), "format": FORMAT_VERSION}
    tmp = path.with_suffix(".tmp")
    save_file(adapter_state(model), tmp, metadata=meta)
    tmp.replace(path)  # atomic: a crash never leaves a half-written adapter file
    return path


def read_adapter_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "rankstudy" not in meta:
        raise ValueError(f"path: {path} is not a rankstudy adapter file (no metadata)")
    return json.loads(meta["rankstudy"])


def load_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Load saved adapters into model; attach them first if the model has none."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    meta = read_adapter_metadata(path)
    if not adapter_layers(model):
        attach_adapters(
            model,
            meta["method"],
            meta["max_rank"],
            meta["train_ranks"],
            target_modules=meta["targets"],
            scaling=meta["scaling"],
            alpha=meta["alpha"],
            dropout=meta["dropout"],
            inference_rule=meta["inference_rule"],
            seed=meta["seed"],
        )
    else:
        mine = adapter_metadata(model)
        for key in ("method", "max_rank", "train_ranks", "scaling", "alpha", "targets"):
            if mine[key] != meta[key]:
                raise ValueError(
                    f"path: adapter file has {key}={meta[key]!r}, "
                    f"the model's adapters have {mine[key]!r}"
                )
    state = load_file(path)
    layers = adapter_layers(model)
    expected = {f"{n}.lora_{x}" for n in layers for x in "AB"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"path: tensors do not match the adapters (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(state[f"{name}.lora_A"])
            layer.lora_B.copy_(state[f"{name}.lora_B"])
    return model


def export_peft(model: nn.Module, rank: int, out_dir: str | Path, rule: str | None = None) -> Path:
    """Write the model served at rank `rank` under `rule` (the schedule's by default) as a PEFT
    LoRA adapter (adapter_config.json + adapter_model.safetensors) that
    peft.PeftModel.from_pretrained loads.

    PEFT computes scaling * B(A(x)) with scaling = lora_alpha / r. We set lora_alpha = r, so the
    scaling is exactly 1, and fold the inference rule's scale (s_k, or p[:k] for truncated_p)
    into B. Under an svd rule each layer's served factors are written as they are, at the
    rank the rule gives that layer (svd_global: a rank_pattern; a layer given none is left out).
    """
    from peft import LoraConfig

    schedule = get_schedule(model)
    k = schedule.check_rank(rank)
    rule = rule or schedule.inference_rule
    layers = adapter_layers(model)
    own_ranks = dict.fromkeys(layers, k)
    if rule in SVD_RULES:
        prepare_svd(layers)
        own_ranks = {n: r for n, r in served_ranks(layers, k, rule).items() if r}
    tensors: dict[str, torch.Tensor] = {}
    fan_in_fan_out = False
    for name, r in own_ranks.items():
        layer = layers[name]
        A, B = _served_factors(layer, r, rule)
        prefix = f"base_model.model.{name}"
        dtype = layer.lora_A.dtype
        tensors[f"{prefix}.lora_A.weight"] = A.to(dtype).cpu().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = B.T.to(dtype).cpu().contiguous()
        fan_in_fan_out |= isinstance(layer.base, Conv1D)

    config = getattr(model, "config", None)
    pattern = {n: r for n, r in own_ranks.items() if r != k}  # keys: full module names
    peft_config = LoraConfig(
        r=k,
        lora_alpha=k,
        rank_pattern=pattern,
        alpha_pattern=pattern,
        lora_dropout=0.0,
        target_modules=sorted(own_ranks),
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=getattr(config, "name_or_path", None) or None,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(out_dir))
    save_file(tensors, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    return out_dir


def _served_factors(layer, k: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [k, in], B [k, out]) of the layer served at k under `rule`, its scale folded into B."""
    if rule in SVD_RULES:
        return layer.svd_A[:k].float(), layer.svd_B[:k].float()
    schedule = layer.schedule
    A = layer.lora_A.detach()[:k].float()
    B = layer.lora_B.detach()[:k].float()
    # the rule's scale, folded into B: p[:k] per component, or s_k
    if schedule.uses_trained_p(rule):
        return A, layer.trained_p[:k].float().unsqueeze(1) * B
    return A, schedule.scale(k) * B
