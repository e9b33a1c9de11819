"""A model's config.json as a plain dict, read without torch or transformers: a tiny model's
from its spec, a hub or local model's from its file, a GGUF file's from its dequantised folder
or, before the first trial made that, from the file's own header.

The plan and the fit check need only a model's shape, and reading it this way keeps
`rankstudy plan` and spec validation free of the deep-learning imports.
"""

from __future__ import annotations

import json
from pathlib import Path

from rankstudy.core.spec import ModelSpec

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
) -> dict:
    """A small config of the family, as config.json holds it (model_type included).
    initializer_range 0.1: at 0.02 the tiny model's output distribution is nearly uniform and
    rank barely matters."""
    if family in ("llama", "qwen2"):
        return {
            "model_type": family,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "vocab_size": vocab,
            "max_position_embeddings": max_positions,
            "initializer_range": initializer_range,
            "tie_word_embeddings": False,
        }
    if family == "gpt2":
        return {
            "model_type": "gpt2",
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": heads,
            "n_inner": intermediate,
            "vocab_size": vocab,
            "n_positions": max_positions,
            "initializer_range": initializer_range,
            "bos_token_id": vocab - 1,
            "eos_token_id": vocab - 1,
        }
    raise ValueError(f"family: unknown family {family!r}; expected one of {FAMILIES}")


def read_config(spec: ModelSpec) -> dict | None:
    """The model's config.json; None for a GGUF file of an architecture its header does not
    describe here (the caller then asks transformers). OSError or ValueError when unreadable."""
    if spec.tiny is not None:
        return tiny_config(**spec.tiny.model_dump(exclude={"seed"}))
    if spec.gguf is not None:
        from rankstudy.core.gguf_files import resolve
        from rankstudy.model.gguf import converted

        folder = converted(spec.gguf)
        return _config_file(folder) if folder else gguf_header_config(resolve(spec.gguf))
    if spec.config is not None:  # the architecture the spec names for a hub model
        path = Path(spec.config).expanduser()
        return _config_file(path) if path.is_dir() else json.loads(path.read_text())
    local = Path(spec.name).expanduser()
    if local.exists():
        return _config_file(local)
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(spec.name, "config.json")).read_text())


def _config_file(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise OSError(f"{folder} has no config.json")
    return json.loads(path.read_text())


# The header keys of a llama-style GGUF file (llama, qwen2: "<arch>.<key>") and the config
# fields they give.
GGUF_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "context_length": "max_position_embeddings",
    "vocab_size": "vocab_size",
}


def gguf_header_config(path: Path) -> dict | None:
    """The config of a llama or qwen2 GGUF file from its header (no tensor is read); None for
    other architectures."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    if arch not in ("llama", "qwen2"):
        return None
    config = {"model_type": arch}
    for key, field in GGUF_KEYS.items():
        if f"{arch}.{key}" in reader.fields:
            config[field] = int(reader.fields[f"{arch}.{key}"].contents())
    if "vocab_size" not in config:
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    config["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    return config
