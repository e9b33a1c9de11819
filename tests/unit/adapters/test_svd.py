"""The svd inference rules against independent computations: numpy's SVD of the explicit dense
update, the untruncated forward, and PEFT's own convert_to_lora."""

import numpy as np
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora.conversion import convert_to_lora
from safetensors.torch import save_file

from conftest import TARGETS
from rankstudy.adapters import adapter_layers, attach_adapters, export_peft, set_rank
from rankstudy.adapters.svd import allocate_global, served_ranks, svd_factors
from rankstudy.core.methods import REGISTRY
from rankstudy.model.tiny import tiny_model

R = 8


def trained(family="llama", method="matryoshka", max_rank=R, seed=4):
    """A tiny model whose adapters moved away from B = 0, as after training."""
    model = tiny_model(family, seed=0).eval()
    attach_adapters(model, method, max_rank, target_modules=TARGETS[family], seed=3)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("shape", [(16, 12, 8), (5, 12, 8), (16, 6, 8)])
def test_served_factors_are_numpys_best_rank_k_approximation(shape):
    """Against the SVD of the dense in x out update, in float64, at every k (and factors
    narrower than R: in or out below R)."""
    n_in, n_out, r = shape
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(r, n_in, generator=gen, dtype=torch.float64)
    B = torch.randn(r, n_out, generator=gen, dtype=torch.float64)
    q = torch.rand(r, generator=gen, dtype=torch.float64) + 0.1
    dense = (A.T * q) @ B
    U, S, Vt = np.linalg.svd(dense.numpy(), full_matrices=False)
    A_s, B_s, sigma = svd_factors(A, B, q)
    assert A_s.shape == (r, n_in) and B_s.shape == (r, n_out)
    n = min(len(S), r)  # the update's rank is at most min(in, out, R); the rest is zero
    np.testing.assert_allclose(sigma[:n].numpy(), S[:n], rtol=1e-10, atol=1e-12)
    assert float(sigma[n:].abs().sum()) < 1e-12
    for k in range(1, n + 1):
        best = (U[:, :k] * S[:k]) @ Vt[:k]
        np.testing.assert_allclose((A_s[:k].T @ B_s[:k]).numpy(), best, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", list(REGISTRY))
def test_rank_R_under_svd_is_the_untruncated_forward(method, tokens):
    """At the maximum rank the svd rule serves the whole update the run trained."""
    model = trained(method=method)
    with torch.no_grad():
        set_rank(model, None)
        full = model(tokens).logits
        set_rank(model, R, "svd")
        served = model(tokens).logits
        set_rank(model, 2, "svd")
        truncated = model(tokens).logits
    torch.testing.assert_close(served, full, rtol=0, atol=1e-5)
    assert (truncated - full).abs().max() > 1e-3  # rank 2 is an approximation


def test_update_scale_is_the_methods_trained_p():
    """q: s_R for LoRA and DyLoRA, the Matryoshka p for Matryoshka (zero past max S)."""
    for method, expected in [
        ("lora", [8**-0.5] * 8),
        ("dylora", [8**-0.5] * 8),
        (
            "matryoshka",
            [1 + 2**-0.5 + 0.5 + 8**-0.5]
            + [2**-0.5 + 0.5 + 8**-0.5]
            + [0.5 + 8**-0.5] * 2
            + [8**-0.5] * 4,
        ),
    ]:
        model = trained(method=method)
        schedule = next(iter(adapter_layers(model).values())).schedule
        np.testing.assert_allclose(schedule.update_scale().numpy(), expected, rtol=1e-12)


def test_factors_follow_the_weights(tokens):
    """Weights changed after a first use (training goes on): the served factors are redone,
    and serve what a model that had those weights from the start serves."""
    used, fresh = trained(method="lora"), trained(method="lora")
    with torch.no_grad():
        set_rank(used, 3, "svd")
        before = used(tokens).logits
        for model in (used, fresh):
            for layer in adapter_layers(model).values():
                layer.lora_B.mul_(2.0)
            set_rank(model, 3, "svd")
        after, expected = used(tokens).logits, fresh(tokens).logits
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    assert (after - before).abs().max() > 1e-2


def test_global_allocation_takes_the_largest_singular_values_over_layers():
    sigmas = {
        "a": torch.tensor([9.0, 5.0, 1.0]),
        "b": torch.tensor([7.0, 6.0, 0.5]),
        "c": torch.tensor([0.0, 0.0, 0.0]),
    }
    assert allocate_global(sigmas, 3) == {"a": 1, "b": 2, "c": 0}
    assert allocate_global(sigmas, 5) == {"a": 2, "b": 2, "c": 1} or allocate_global(sigmas, 5) == {
        "a": 3,
        "b": 2,
        "c": 0,
    }
    assert sum(allocate_global(sigmas, 6).values()) == 6


def test_svd_global_spends_the_same_total_rank_as_svd():
    model = trained(family="qwen2", method="dylora")
    layers = adapter_layers(model)
    set_rank(model, 2, "svd_global")
    ranks = served_ranks(layers, 2, "svd_global")
    assert sum(ranks.values()) == 2 * len(layers)
    assert len(set(ranks.values())) > 1  # spread by the layers' spectra, not uniform
    assert [layer.svd_rank for layer in layers.values()] == list(ranks.values())


def test_svd_global_is_at_least_as_close_in_frobenius_as_svd():
    """Summed over layers, the global allocation's error is never above the per-layer one
    (it is the optimum of the same total rank)."""
    model = trained(family="qwen2", method="matryoshka")
    layers = adapter_layers(model)
    set_rank(model, 2, "svd")
    errors = {}
    for rule in ("svd", "svd_global"):
        ranks = served_ranks(layers, 2, rule)
        errors[rule] = sum(
            float((layer.svd_sigma[ranks[n] :] ** 2).sum()) for n, layer in layers.items()
        )
    assert errors["svd_global"] <= errors["svd"] + 1e-12


def test_same_scores_as_peft_convert_to_lora(tmp_path, tokens):
    """LoRA at R served at rank k by our svd rule, against PEFT's own conversion of the same
    update to a rank-k LoRA (its float32 SVD of the dense delta)."""
    model = trained(method="lora")
    export_peft(model, R, tmp_path / "full")  # the whole trained update as a PEFT adapter
    for k in (1, 3, 6):
        peft_model = PeftModel.from_pretrained(tiny_model("llama", seed=0), tmp_path / "full")
        config, state = convert_to_lora(peft_model, rank=k)
        out = tmp_path / f"converted{k}"
        config.save_pretrained(str(out))
        save_file(state, out / "adapter_model.safetensors")
        theirs = PeftModel.from_pretrained(tiny_model("llama", seed=0), out).eval()
        set_rank(model, k, "svd")
        with torch.no_grad():
            torch.testing.assert_close(
                theirs(tokens).logits, model(tokens).logits, rtol=0, atol=2e-5
            )
