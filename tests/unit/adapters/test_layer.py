"""The NestedLoRA layer against independent computations, in float64."""

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rankstudy.adapters import RankSchedule, matryoshka_p
from rankstudy.adapters.layer import NestedLoRA

IN, OUT, R = 12, 10, 8
S = (1, 2, 4, 8)


def s(r, scaling="sqrt"):
    return {"none": 1.0, "rank": 1 / r, "sqrt": 1 / math.sqrt(r)}[scaling]


def make_layer(method, base=None, scaling="sqrt", rule="scaled", train_ranks=S, max_rank=R):
    torch.manual_seed(0)
    base = base if base is not None else nn.Linear(IN, OUT).double()
    schedule = RankSchedule(method, max_rank, train_ranks, scaling, inference_rule=rule)
    layer = NestedLoRA(base, schedule).double()
    with torch.no_grad():  # B starts at zero; make it non-trivial so the delta is visible
        layer.lora_B.normal_()
    for p in base.parameters():
        p.requires_grad_(False)
    return layer


def sub_adapter(layer, x, r):
    """x A[:, :r] B[:r] written with masks over the full factors, as the reference code does."""
    A = layer.lora_A.T  # [in, R], the DESIGN.md orientation
    B = layer.lora_B  # [R, out]
    mask = (torch.arange(A.shape[1]) < r).double()
    return (x @ (A * mask)) @ (B * mask[:, None])


X = torch.randn(3, 5, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("scaling", ["none", "rank", "sqrt"])
def test_matryoshka_forward_is_the_explicit_sum_of_scaled_sub_adapters(scaling):
    layer = make_layer("matryoshka", scaling=scaling)
    expected = layer.base(X) + sum(s(r, scaling) * sub_adapter(layer, X, r) for r in S)
    torch.testing.assert_close(layer(X), expected, rtol=1e-12, atol=1e-12)


def test_matryoshka_binary_is_the_diag_form_divided_by_set_size():
    diag = make_layer("matryoshka")
    binary = make_layer("matryoshka_binary")
    torch.testing.assert_close(binary.lora_A, diag.lora_A)
    delta_diag = diag(X) - diag.base(X)
    delta_binary = binary(X) - binary.base(X)
    torch.testing.assert_close(delta_binary, delta_diag / len(S), rtol=1e-12, atol=1e-12)


def test_matryoshka_on_gpt2_conv1d():
    torch.manual_seed(0)
    conv = Conv1D(OUT, IN).double()
    nn.init.normal_(conv.weight)
    layer = make_layer("matryoshka", base=conv)
    assert (layer.in_features, layer.out_features) == (IN, OUT)
    expected = (X @ conv.weight + conv.bias) + sum(s(r) * sub_adapter(layer, X, r) for r in S)
    torch.testing.assert_close(layer(X), expected, rtol=1e-12, atol=1e-12)


def test_lora_schedule_is_a_plain_lora_layer():
    layer = make_layer("lora", max_rank=4)
    A, B = layer.lora_A, layer.lora_B  # [4, in], [4, out]
    plain = layer.base(X) + s(4) * (X @ A.T) @ B
    torch.testing.assert_close(layer(X), plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("b", S)
def test_dylora_at_a_fixed_b_is_truncated_lora(b):
    layer = make_layer("dylora").train()
    layer.schedule.sampled_rank = b
    expected = layer.base(X) + s(b) * sub_adapter(layer, X, b)
    torch.testing.assert_close(layer(X), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "method",
    ["lora", "dylora", "matryoshka", "matryoshka_binary", "nested_sampled", "dylora_frozen"],
)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_inference_at_rank_k_paper_rule(method, k):
    layer = make_layer(method).eval()
    layer.schedule.rank = k
    expected = layer.base(X) + s(k) * sub_adapter(layer, X, k)
    torch.testing.assert_close(layer(X), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_inference_at_rank_k_truncated_p_rule(k):
    layer = make_layer("matryoshka", rule="truncated_p").eval()
    layer.schedule.rank = k
    p = matryoshka_p(R, S, "sqrt")[:k]
    A, B = layer.lora_A[:k].T, layer.lora_B[:k]
    expected = layer.base(X) + (X @ A) @ torch.diag(p) @ B
    torch.testing.assert_close(layer(X), expected, rtol=1e-12, atol=1e-12)


# b -> lo, the largest rank of S below b (0 below the smallest), written out for S = {1, 2, 4, 8}
PREVIOUS = {1: 0, 2: 1, 4: 2, 8: 4}


@pytest.mark.parametrize("b", S)
def test_dylora_frozen_forward_is_dyloras_at_the_same_b(b):
    frozen, dylora = make_layer("dylora_frozen").train(), make_layer("dylora").train()
    frozen.schedule.sampled_rank = dylora.schedule.sampled_rank = b
    expected = frozen.base(X) + s(b) * sub_adapter(frozen, X, b)
    torch.testing.assert_close(frozen(X), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(frozen(X), dylora(X))  # the same products, bit for bit


@pytest.mark.parametrize("b", S)
def test_dylora_frozen_trains_only_components_from_the_previous_rank_to_b(b):
    """Gradients by autograd: zero on components below lo, DyLoRA's own on lo..b-1, and
    zero past b (as for DyLoRA); for the smallest rank (lo = 0) exactly DyLoRA's."""
    upstream = torch.randn(
        3, 5, OUT, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    frozen, dylora = make_layer("dylora_frozen").train(), make_layer("dylora").train()
    for layer in (frozen, dylora):
        layer.schedule.sampled_rank = b
        (layer(X) * upstream).sum().backward()
    lo = PREVIOUS[b]
    for name in ("lora_A", "lora_B"):
        got, full = getattr(frozen, name).grad, getattr(dylora, name).grad
        assert torch.all(got[:lo] == 0) and torch.all(got[b:] == 0), name
        assert torch.all(full[:b].abs().sum(1) > 0), name  # DyLoRA trains every one below b
        torch.testing.assert_close(got[lo:b], full[lo:b], rtol=1e-12, atol=0)


def test_dylora_frozen_gradient_against_an_explicit_split_of_the_adapter():
    """b = 4, lo = 2: the gradient of sum(upstream * (base + s_4 (x A_c^T B_c + x A_t^T B_t)))
    with the first two components A_c, B_c constants, the next two A_t, B_t trained."""
    upstream = torch.randn(
        3, 5, OUT, dtype=torch.float64, generator=torch.Generator().manual_seed(6)
    )
    layer = make_layer("dylora_frozen").train()
    layer.schedule.sampled_rank = 4
    (layer(X) * upstream).sum().backward()
    A_t = layer.lora_A[2:4].detach().clone().requires_grad_()
    B_t = layer.lora_B[2:4].detach().clone().requires_grad_()
    A_c, B_c = layer.lora_A[:2].detach(), layer.lora_B[:2].detach()
    delta = s(4) * ((X @ A_c.T) @ B_c + (X @ A_t.T) @ B_t)
    ((layer.base(X) + delta) * upstream).sum().backward()
    torch.testing.assert_close(layer.lora_A.grad[2:4], A_t.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.lora_B.grad[2:4], B_t.grad, rtol=1e-12, atol=1e-12)


def test_gradient_of_each_component_scales_with_p():
    """d loss / d A[i] under diag(p) is p_i times the gradient under p = 1."""
    upstream = torch.randn(3, 5, OUT, dtype=torch.float64)
    mat = make_layer("matryoshka", scaling="sqrt")
    ones = make_layer("lora", scaling="none")  # p = 1 on every component, same A and B
    torch.testing.assert_close(ones.lora_A, mat.lora_A)
    (mat(X) * upstream).sum().backward()
    (ones(X) * upstream).sum().backward()
    p = matryoshka_p(R, S, "sqrt")
    torch.testing.assert_close(mat.lora_A.grad, p[:, None] * ones.lora_A.grad)
    torch.testing.assert_close(mat.lora_B.grad, p[:, None] * ones.lora_B.grad)


def test_components_past_max_train_rank_get_no_gradient():
    layer = make_layer("matryoshka", train_ranks=(1, 2, 4))
    layer(X).sum().backward()
    assert torch.all(layer.lora_A.grad[4:] == 0) and torch.all(layer.lora_B.grad[4:] == 0)
    assert torch.all(layer.lora_A.grad[:4].abs().sum(1) > 0)


@pytest.mark.parametrize(
    "method,rule,k",
    [("lora", "scaled", 8), ("matryoshka", "scaled", 8), ("matryoshka", "truncated_p", 3)],
)
def test_bfloat16_forward_is_the_float64_forward_to_bfloat16_precision(method, rule, k):
    """The GPU path runs the layer in bf16: it must compute the same forward, only rounded.
    bf16 keeps 8 significant bits (a rounding of 2^-9 per value); a few roundings in a row stay
    well inside 1/128 of the output's size, which a wrong scale or a dropped P would not."""
    exact, layer = make_layer(method, rule=rule), make_layer(method, rule=rule).to(torch.bfloat16)
    for each in (exact, layer):
        each.eval().schedule.rank = k
    reference, y = exact(X), layer(X.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    tolerance = reference.abs().max().item() / 128
    assert (reference - exact.base(X)).abs().max() > 10 * tolerance  # the adapter counts
    torch.testing.assert_close(y.double(), reference, rtol=0, atol=tolerance)
