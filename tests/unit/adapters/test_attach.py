"""attach_adapters / set_rank on real tiny transformers models."""

import pytest
import torch

from rankstudy.adapters import (
    NestedLoRA,
    adapter_layers,
    attach_adapters,
    get_schedule,
    powers_of_two,
    set_rank,
)
from rankstudy.model.tiny import tiny_model


def test_freezes_base_and_optimizer_step_leaves_it_unchanged(tokens):
    model = attach_adapters(
        tiny_model("llama"), "matryoshka", 8, target_modules=["q_proj", "v_proj"]
    )
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    for _ in range(2):
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in trainable), name


def test_suffix_list_matches_like_peft():
    model = attach_adapters(tiny_model("llama", layers=3), "lora", 4, target_modules=["v_proj"])
    assert sorted(adapter_layers(model)) == [f"model.layers.{i}.self_attn.v_proj" for i in range(3)]


def test_regex_matches_full_names():
    model = attach_adapters(
        tiny_model("llama", layers=3),
        "lora",
        4,
        target_modules=r"model\.layers\.[02]\.mlp\.(up|down)_proj",
    )
    assert sorted(adapter_layers(model)) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.2.mlp.down_proj",
        "model.layers.2.mlp.up_proj",
    ]


def test_gpt2_conv1d_layers_are_adapted():
    model = attach_adapters(tiny_model("gpt2"), "matryoshka", 8, target_modules=["c_attn"])
    assert len(adapter_layers(model)) == 2


def test_default_rank_set_is_powers_of_two():
    assert powers_of_two(32) == (1, 2, 4, 8, 16, 32)
    assert powers_of_two(12) == (1, 2, 4, 8)
    model = attach_adapters(tiny_model("llama"), "matryoshka", 12)
    assert get_schedule(model).train_ranks == (1, 2, 4, 8)


def test_every_layer_shares_one_schedule():
    model = attach_adapters(
        tiny_model("qwen2"), "dylora", 8, target_modules=["q_proj", "up_proj", "down_proj"]
    )
    schedules = {id(m.schedule) for m in model.modules() if isinstance(m, NestedLoRA)}
    assert len(schedules) == 1


def dylora_draws(seed, tokens, steps=12):
    """The b each adapted layer saw in each training forward."""
    model = attach_adapters(
        tiny_model("llama"), "dylora", 8, target_modules=["q_proj", "v_proj"], seed=seed
    ).train()
    seen = []
    for layer in adapter_layers(model).values():
        layer.register_forward_hook(lambda m, i, o: seen.append(m.schedule.sampled_rank))
    draws = []
    for _ in range(steps):
        seen.clear()
        model(tokens)
        assert len(seen) == 4 and len(set(seen)) == 1  # one b for every layer in a step
        draws.append(seen[0])
    return draws


def test_dylora_draws_one_seeded_b_per_step_from_the_rank_set(tokens):
    a, b, c = dylora_draws(0, tokens), dylora_draws(0, tokens), dylora_draws(1, tokens)
    assert a == b and a != c
    assert set(a) <= {1, 2, 4, 8} and len(set(a)) > 1


def test_dylora_does_not_draw_in_eval_or_at_a_set_rank(tokens):
    model = attach_adapters(tiny_model("llama"), "dylora", 8)
    schedule = get_schedule(model)
    model.eval()
    model(tokens)
    assert schedule.sampled_rank is None
    model.train()
    set_rank(model, 2)
    model(tokens)
    assert schedule.sampled_rank is None


def test_set_rank_changes_output_and_none_restores_training_behaviour(tokens):
    model = attach_adapters(tiny_model("llama"), "matryoshka", 8)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_()
        full = model(tokens).logits
        set_rank(model, 2)
        low = model(tokens).logits
        set_rank(model, None)
        again = model(tokens).logits
    assert (full - low).abs().max() > 1e-3
    torch.testing.assert_close(full, again, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(method="lorax"), "method"),
        (dict(scaling="log"), "scaling"),
        (dict(train_ranks=[]), "train_ranks"),
        (dict(train_ranks=[16, 32]), "train_ranks"),
        (dict(max_rank=0), "max_rank"),
        (dict(target_modules=["q_proj", "qproj"]), "target_modules"),
        (dict(target_modules=[]), "target_modules"),
        (dict(target_modules=r"layers\.9\..*"), "target_modules"),
        (dict(target_modules="("), "target_modules"),
        (dict(inference_rule="nearest"), "inference_rule"),
        (dict(dropout=1.0), "dropout"),
        (dict(a_init="xavier"), "a_init"),
    ],
)
def test_bad_attach_arguments_name_the_field_and_leave_the_model_untouched(kwargs, field):
    model = tiny_model("llama")
    args = dict(method="matryoshka", max_rank=8, train_ranks=[1, 2, 4, 8]) | kwargs
    with pytest.raises(ValueError, match=f"^{field}:"):
        attach_adapters(model, **args)
    assert not adapter_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_unmatched_target_lists_the_linear_module_names():
    with pytest.raises(ValueError, match="qproj.*named: down_proj, gate_proj, k_proj, lm_head"):
        attach_adapters(tiny_model("llama"), "lora", 4, target_modules=["qproj"])


@pytest.mark.parametrize("k,field", [(0, "k"), (-1, "k"), (9, "k"), (2.0, "k")])
def test_bad_inference_rank(k, field):
    model = attach_adapters(tiny_model("llama"), "matryoshka", 8)
    with pytest.raises(ValueError, match=f"^{field}:"):
        set_rank(model, k)


def test_bad_rule_and_model_without_adapters():
    model = attach_adapters(tiny_model("llama"), "matryoshka", 8)
    with pytest.raises(ValueError, match="^rule:"):
        set_rank(model, 2, rule="nearest")
    with pytest.raises(ValueError, match="^model:"):
        set_rank(tiny_model("llama"), 2)
    with pytest.raises(ValueError, match="^model: already"):
        attach_adapters(model, "lora", 4)
