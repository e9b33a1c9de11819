"""The P vector and the rank scale against known answers."""

import math

import pytest
import torch

from rankstudy.adapters import matryoshka_p, rank_scale


def test_worked_example_from_design():
    p = matryoshka_p(16, [1, 2, 4, 8, 16], "none")
    assert p.tolist() == [5, 4, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "scaling,s",
    [("none", lambda r: 1.0), ("rank", lambda r: 1 / r), ("sqrt", lambda r: 1 / math.sqrt(r))],
)
def test_p_is_sum_of_scales_of_larger_ranks(scaling, s):
    S = [1, 3, 4, 6]
    p = matryoshka_p(8, S, scaling)
    for i in range(8):
        assert p[i].item() == pytest.approx(sum(s(r) for r in S if r > i))
    assert p[6:].tolist() == [0.0, 0.0]  # past max(S)


def test_ranks_above_max_rank_are_ignored_and_order_does_not_matter():
    assert torch.equal(matryoshka_p(4, [8, 4, 1, 2, 16], "sqrt"), matryoshka_p(4, [1, 2, 4]))


def test_alpha_multiplies_every_scale():
    assert rank_scale(4, "rank", alpha=8.0) == 2.0
    assert torch.allclose(
        matryoshka_p(4, [2, 4], "none", alpha=3.0),
        torch.tensor([6.0, 6.0, 3.0, 3.0], dtype=torch.float64),
    )


@pytest.mark.parametrize(
    "args,field",
    [
        ((16, [], "sqrt"), "train_ranks"),
        ((4, [8, 16], "sqrt"), "train_ranks"),
        ((4, [0, 2], "sqrt"), "train_ranks"),
        ((4, [1.5], "sqrt"), "train_ranks"),
        ((0, [1], "sqrt"), "max_rank"),
        ((4, [1, 2], "log"), "scaling"),
    ],
)
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        matryoshka_p(*args)
