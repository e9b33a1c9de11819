"""A model's linear modules and attention width, from its config alone: what the plan's FLOP
count and the spec's fit check need, without building the model (no torch).

Llama, Qwen2 and GPT-2 are laid out here by hand, with the module names transformers gives
them (tests compare every name and shape with the built model). Any other architecture is
built by transformers on the meta device (no weights): that path alone imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankstudy.core.cost import ModelShape
from rankstudy.core.spec import ModelSpec
from rankstudy.core.targets import Targets, match_targets
from rankstudy.model.model_config import read_config


@dataclass(frozen=True)
class Architecture:
    linears: dict[str, tuple[int, int]]  # module name -> (in_features, out_features)
    layers: int
    attn_dim: int  # heads * head_dim: the width of QK^T and AV
    positions: int | None  # how many positions the model embeds (None: unsaid)

    def adapted(self, target_modules: Targets) -> dict[str, tuple[int, int]]:
        """The linear modules target_modules adapt, by name; InputError names a target that
        matches nothing."""
        return {n: self.linears[n] for n in match_targets(list(self.linears), target_modules)}

    def shape(self, target_modules: Targets) -> ModelShape:
        """The FLOP-relevant shape with adapters on target_modules."""
        adapted = self.adapted(target_modules)
        return ModelShape(
            matmul_params=sum(i * o for i, o in self.linears.values()),
            layers=self.layers,
            attn_dim=self.attn_dim,
            adapter_width=sum(i + o for i, o in adapted.values()),
        )


def _llama(c: dict) -> Architecture:
    """Llama and Qwen2 (the same modules; Qwen2's q, k, v carry a bias)."""
    hidden, heads, layers = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
    head = c.get("head_dim") or hidden // heads
    kv = c["num_key_value_heads"] * head
    inter = c["intermediate_size"]
    per_layer = {
        "self_attn.q_proj": (hidden, heads * head),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (heads * head, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    linears = {f"model.layers.{i}.{n}": s for i in range(layers) for n, s in per_layer.items()}
    linears["lm_head"] = (hidden, c["vocab_size"])
    return Architecture(linears, layers, heads * head, positions(c))


def _gpt2(c: dict) -> Architecture:
    hidden, layers = c["n_embd"], c["n_layer"]
    inner = c.get("n_inner") or 4 * hidden
    per_layer = {
        "attn.c_attn": (hidden, 3 * hidden),
        "attn.c_proj": (hidden, hidden),
        "mlp.c_fc": (hidden, inner),
        "mlp.c_proj": (inner, hidden),
    }
    linears = {f"transformer.h.{i}.{n}": s for i in range(layers) for n, s in per_layer.items()}
    linears["lm_head"] = (hidden, c["vocab_size"])
    return Architecture(linears, layers, hidden, positions(c))


# Config fields that give how many positions a model embeds.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
LAYOUTS = {"llama": _llama, "qwen2": _llama, "gpt2": _gpt2}


def positions(config: dict) -> int | None:
    """How many positions the model embeds (None: the config does not say)."""
    for key in POSITION_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    return None


def from_config(config: dict) -> Architecture | None:
    """The architecture a config.json describes; None for a model type not laid out here, or
    a config that leaves a field to transformers' defaults (which differ by family and
    version: transformers reads those)."""
    layout = LAYOUTS.get(config.get("model_type"))
    try:
        arch = layout(config) if layout is not None else None
    except KeyError:
        return None
    return arch if arch is not None and arch.positions is not None else None


def from_module(model) -> Architecture:
    """The same description read off a built transformers model."""
    from rankstudy.adapters.layer import (
        ADAPTABLE,
        linear_shape,
    )

    config = model.config
    heads = config.num_attention_heads
    head = getattr(config, "head_dim", None) or config.hidden_size // heads
    linears = {n: linear_shape(m) for n, m in model.named_modules() if isinstance(m, ADAPTABLE)}
    values = {k: getattr(config, k, None) for k in POSITION_KEYS}
    return Architecture(linears, config.num_hidden_layers, heads * head, positions(values))


def read_architecture(spec: ModelSpec) -> Architecture:
    """The spec's model, from its config; OSError or ValueError when that cannot be read."""
    config = read_config(spec)
    known = from_config(config) if config is not None else None
    return known if known is not None else from_module(meta_model(spec))


def meta_model(spec: ModelSpec):
    """The model built by transformers on the meta device, without weights: for architectures
    not laid out here (this imports torch and transformers)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.gguf is not None:  # the converted folder's config, else the file's header
        from rankstudy.core.gguf_files import resolve
        from rankstudy.model.gguf import converted

        path = resolve(spec.gguf)
        folder = converted(spec.gguf)
        source = {"pretrained_model_name_or_path": folder or path.parent}
        source |= {} if folder else {"gguf_file": path.name}
    else:
        source = {"pretrained_model_name_or_path": spec.name}
    config = AutoConfig.from_pretrained(**source, trust_remote_code=spec.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)


def model_shape(model) -> ModelShape:
    """Read the shape off a trial's (possibly adapted) transformers model; adapters are not
    counted in matmul_params. (The plan reads it off the config: Architecture.shape.)"""
    from rankstudy.adapters.layer import ADAPTABLE, NestedLoRA, linear_shape  # a torch model

    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, ADAPTABLE))
    width = sum(sum(linear_shape(m.base)) for m in model.modules() if isinstance(m, NestedLoRA))
    return ModelShape(matmul, config.num_hidden_layers, heads * head_dim, width)
