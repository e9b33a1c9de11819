"""Adapters on disk: PEFT round trip on tiny Llama, Qwen2 and GPT-2, and the full-rank file."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open

from conftest import TARGETS
from rankstudy.adapters import (
    adapter_layers,
    attach_adapters,
    export_peft,
    load_adapters,
    read_adapter_metadata,
    save_adapters,
    set_rank,
)
from rankstudy.model.tiny import tiny_model


def trained_model(family, method="matryoshka", rule="scaled", max_rank=8):
    """A tiny model whose adapters moved away from B = 0, as after training."""
    model = tiny_model(family, seed=0)
    attach_adapters(
        model, method, max_rank, target_modules=TARGETS[family], inference_rule=rule, seed=3
    )
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize(
    "method,rule,k",
    [
        ("matryoshka", "scaled", 1),
        ("matryoshka", "scaled", 4),
        ("matryoshka", "truncated_p", 3),
        ("dylora", "scaled", 8),
        ("lora", "scaled", 8),
        ("lora", "svd", 3),
        ("matryoshka", "svd", 2),
        ("dylora", "svd_global", 3),
        ("matryoshka", "svd_global", 5),
    ],
)
def test_peft_loads_the_export_and_reproduces_our_logits(tmp_path, tokens, family, method, rule, k):
    model = trained_model(family, method, rule)
    set_rank(model, k)
    with torch.no_grad():
        ours = model(tokens).logits
        base_logits = tiny_model(family, seed=0)(tokens).logits
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter really changes the output

    export_peft(model, k, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == k and config["lora_alpha"] == k and config["peft_type"] == "LORA"
    peft_model = PeftModel.from_pretrained(tiny_model(family, seed=0), tmp_path).eval()
    with torch.no_grad():
        theirs = peft_model(tokens).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_export_truncated_rule_differs_from_paper_rule(tmp_path, tokens):
    """The rule is part of what is exported: the two rules give different PEFT adapters."""
    model = trained_model("llama")
    export_peft(model, 2, tmp_path / "scaled", rule="scaled")
    export_peft(model, 2, tmp_path / "trunc", rule="truncated_p")
    outs = []
    for d in ("scaled", "trunc"):
        peft_model = PeftModel.from_pretrained(tiny_model("llama", seed=0), tmp_path / d)
        with torch.no_grad():
            outs.append(peft_model(tokens).logits)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_export_rejects_rank_outside_adapter(tmp_path):
    model = trained_model("llama")
    for k in (0, 9):
        with pytest.raises(ValueError, match="^k:"):
            export_peft(model, k, tmp_path)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_and_load_full_rank_adapters(tmp_path, tokens, family):
    model = trained_model(family, "matryoshka", "truncated_p")
    path = save_adapters(model, tmp_path)
    meta = read_adapter_metadata(path)
    assert meta["method"] == "matryoshka" and meta["max_rank"] == 8
    assert meta["train_ranks"] == [1, 2, 4, 8] and meta["scaling"] == "sqrt"
    assert meta["inference_rule"] == "truncated_p"
    assert meta["targets"] == list(adapter_layers(model)) and len(meta["targets"]) >= 4
    with safe_open(str(path), framework="pt") as f:  # safetensors, no pickle
        assert all(key.endswith((".lora_A", ".lora_B")) for key in f.keys())  # noqa: SIM118

    fresh = load_adapters(tiny_model(family, seed=0), path)
    for k in (None, 1, 5, 8):
        set_rank(model, k)
        set_rank(fresh, k)
        with torch.no_grad():
            torch.testing.assert_close(fresh(tokens).logits, model(tokens).logits, rtol=0, atol=0)


def test_load_into_mismatched_adapters_is_an_error(tmp_path):
    path = save_adapters(trained_model("llama", "matryoshka"), tmp_path)
    other = attach_adapters(tiny_model("llama"), "matryoshka", 16, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="^path: adapter file has max_rank=8"):
        load_adapters(other, path)


def test_save_is_atomic_and_overwrites(tmp_path):
    model = trained_model("llama")
    save_adapters(model, tmp_path)
    save_adapters(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters.safetensors"]
