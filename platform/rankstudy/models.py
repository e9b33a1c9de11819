"""Tiny transformers models built from a config and a seed: nothing is downloaded.

They give tests and CPU studies real Llama-, Qwen2- and GPT-2-style architectures at a size
that trains in seconds on two cores.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
)

FAMILIES = ("llama", "qwen2", "gpt2")


def tiny_config(
    family: str = "llama",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    vocab: int = 256,
    max_positions: int = 512,
    initializer_range: float = 0.1,
) -> PretrainedConfig:
    """A small config of the family. initializer_range 0.1: at 0.02 the tiny model's output
    distribution is nearly uniform and rank barely matters."""
    if family in ("llama", "qwen2"):
        cls = LlamaConfig if family == "llama" else Qwen2Config
        return cls(
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            vocab_size=vocab,
            max_position_embeddings=max_positions,
            initializer_range=initializer_range,
            tie_word_embeddings=False,
        )
    if family == "gpt2":
        return GPT2Config(
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            vocab_size=vocab,
            n_positions=max_positions,
            initializer_range=initializer_range,
            bos_token_id=vocab - 1,
            eos_token_id=vocab - 1,
        )
    raise ValueError(f"family: unknown family {family!r}; expected one of {FAMILIES}")


def tiny_model(family: str = "llama", seed: int = 0, **config_overrides) -> torch.nn.Module:
    """A randomly initialised tiny causal LM, identical for the same family, sizes and seed."""
    config = tiny_config(family, **config_overrides)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()
