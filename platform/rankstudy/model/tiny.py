"""Tiny transformers models built from a config and a seed: nothing is downloaded.

They give tests and CPU studies real Llama-, Qwen2- and GPT-2-style architectures at a size
that trains in seconds on two cores.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from rankstudy.model import model_config


def tiny_config(family: str = "llama", **sizes) -> PretrainedConfig:
    """The transformers config of rankstudy.model.model_config.tiny_config (its sizes, by name)."""
    config = model_config.tiny_config(family, **sizes)
    return AutoConfig.for_model(config.pop("model_type"), **config)


def tiny_model(
    family: str = "llama", seed: int = 0, attn_implementation: str = "sdpa", **config_overrides
) -> torch.nn.Module:
    """A randomly initialised tiny causal LM, identical for the same family, sizes and seed."""
    config = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()
