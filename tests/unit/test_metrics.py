"""AURAC against hand-computed values."""

import pytest

from rankstudy.core.aurac import aurac

RANKS, SCORES = [1, 2, 4, 8], [0.5, 0.6, 0.8, 0.9]


def test_log2_axis_by_hand():
    # x = 0,1,2,3: trapezoids 0.55 + 0.70 + 0.85 over a span of 3
    assert aurac(RANKS, SCORES, "log2") == pytest.approx(2.1 / 3)


def test_linear_axis_by_hand():
    # x = 1,2,4,8: 1*0.55 + 2*0.70 + 4*0.85 over a span of 7
    assert aurac(RANKS, SCORES, "linear") == pytest.approx(5.35 / 7)


def test_default_axis_is_log2():
    assert aurac(RANKS, SCORES) == aurac(RANKS, SCORES, "log2")


def test_unsorted_ranks_are_sorted_with_their_scores():
    assert aurac([8, 1, 4, 2], [0.9, 0.5, 0.8, 0.6], "linear") == pytest.approx(5.35 / 7)


def test_flat_curve_gives_its_value_and_single_point_its_score():
    assert aurac([1, 4, 32], [0.7, 0.7, 0.7]) == pytest.approx(0.7)
    assert aurac([16], [0.42], "linear") == 0.42


def test_uneven_log_spacing():
    # x = log2(1)=0, log2(2)=1, log2(32)=5: (1*(0.2+0.4)/2 + 4*(0.4+1.0)/2) / 5
    assert aurac([1, 2, 32], [0.2, 0.4, 1.0]) == pytest.approx((0.3 + 2.8) / 5)


@pytest.mark.parametrize(
    "ranks,scores,axis,field",
    [
        ([], [], "log2", "ranks"),
        ([0, 2], [0.1, 0.2], "log2", "ranks"),
        ([-1, 2], [0.1, 0.2], "linear", "ranks"),
        ([1, 2], [0.1], "log2", "scores"),
        ([2, 2], [0.1, 0.2], "log2", "ranks"),
        ([1, 2], [0.1, 0.2], "ln", "axis"),
    ],
)
def test_bad_input(ranks, scores, axis, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        aurac(ranks, scores, axis)
