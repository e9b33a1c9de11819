"""The frontier's readings on constructed sweeps whose answers are worked out by hand: costs
are powers of ten, so a log-cost interpolation is a plain fraction of a decade."""

import math

import pytest

from rankstudy.core.frontier import GridReference, frontier_points, frontier_table
from rankstudy.core.summaries import PointEntry


def point(aurac, flops, seconds=None, std=0.0):
    return PointEntry(aurac=aurac, std=std, flops=flops, device_seconds=seconds or flops / 1e10)


# The grid: 0.80 at budget 1.0 for 1e12 FLOPs (100 device-seconds); target 0.80 - 0.01 = 0.79.
SWEEP = {
    0.25: {
        "lora_grid": point(0.70, 1e11),
        "exact": point(0.70, 1e10),
        "interpolated": point(0.70, 1e11),
        "never": point(0.60, 1e10),
        "outside": point(0.50, 1e9),
        "dips": point(0.70, 1e10),
    },
    1.0: {
        "lora_grid": point(0.80, 1e12),
        "exact": point(0.79, 1e11),  # lands on the target itself
        "interpolated": point(0.76, 1e12),
        "never": point(0.65, 1e11),
        "outside": point(0.60, 1e10),
        "dips": point(0.795, 1e11),  # crosses here first, then falls back below
    },
    4.0: {
        "lora_grid": point(0.85, 1e13),
        "exact": point(0.82, 1e12),
        "interpolated": point(0.82, 1e13),
        "never": point(0.70, 1e12),
        "outside": point(0.70, 1e11),
        "dips": point(0.75, 1e12),
    },
    16.0: {"dips": point(0.85, 1e13)},
}


def rows(points, **kwargs):
    return {r.method: r for r in frontier_table(points, **kwargs)}


def test_points_become_one_line_per_method_sorted_by_flops():
    lines = frontier_points({4.0: {"a": point(0.9, 4e12)}, 1.0: {"a": point(0.8, 1e12)}})
    line = [(p.budget, p.aurac, p.flops) for p in lines["a"]]
    assert line == [(1.0, 0.8, 1e12), (4.0, 0.9, 4e12)]
    assert list(frontier_points(SWEEP)) == [
        "lora_grid", "exact", "interpolated", "never", "outside", "dips"
    ]  # fmt: skip
    assert [p.budget for p in frontier_points(SWEEP)["dips"]] == [0.25, 1.0, 4.0, 16.0]


def test_one_row_per_single_run_method_read_against_the_grid_at_budget_one():
    table = rows(SWEEP)
    assert list(table) == ["exact", "interpolated", "never", "outside", "dips"]
    assert all(r.grid == GridReference(1.0, 0.80, 1e12) for r in table.values())
    assert table["exact"].target == pytest.approx(0.79)


def test_an_exact_crossing_is_the_point_that_reaches_the_target():
    exact = rows(SWEEP)["exact"]
    assert exact.reached_at == 1e11  # 0.79 = 0.80 - 0.01 up to float rounding
    assert exact.aurac_at_grid_compute == 0.82  # its point at 1e12 is the grid's compute
    assert not exact.reached_at_cheapest


def test_an_interpolated_crossing_lies_where_the_log_cost_line_meets_the_target():
    interpolated = rows(SWEEP)["interpolated"]
    # 0.76 at 1e12, 0.82 at 1e13: 0.79 is half-way, half a decade above 1e12
    assert interpolated.reached_at == pytest.approx(10**12.5)
    assert interpolated.aurac_at_grid_compute == 0.76


def test_the_first_crossing_counts_even_if_the_line_falls_back():
    dips = rows(SWEEP)["dips"]
    # 0.70 at 1e10, 0.795 at 1e11: 0.79 is 0.09 / 0.095 = 18/19 of the decade above 1e10
    assert dips.reached_at == pytest.approx(10 ** (10 + 18 / 19))
    assert dips.aurac_at_grid_compute == 0.75


def test_not_reached_within_the_sweep_is_none():
    never = rows(SWEEP)["never"]
    assert never.reached_at is None and not never.reached_at_cheapest
    assert never.aurac_at_grid_compute == 0.70


def test_grid_compute_outside_the_method_points_has_no_aurac():
    outside = rows(SWEEP)["outside"]
    assert outside.aurac_at_grid_compute is None  # its points stop at 1e11, the grid's is 1e12
    assert outside.reached_at is None
    above = {1.0: {"lora_grid": point(0.8, 1e12), "dear": point(0.9, 1e13)}}
    assert rows(above)["dear"].aurac_at_grid_compute is None


def test_aurac_at_grid_compute_interpolates_between_bracketing_points():
    sweep = {
        1.0: {"lora_grid": point(0.80, 1e12), "m": point(0.70, 1e11)},
        8.0: {"m": point(0.88, 1e14)},
    }
    m = rows(sweep)["m"]
    assert m.aurac_at_grid_compute == pytest.approx(0.76)  # a third of three decades
    assert m.reached_at == pytest.approx(10**12.5)  # 0.79: half of 0.70 -> 0.88


def test_reached_at_the_cheapest_point_is_flagged_as_an_upper_bound():
    sweep = {1.0: {"lora_grid": point(0.80, 1e12), "cheap": point(0.81, 1e11)}}
    cheap = rows(sweep)["cheap"]
    assert cheap.reached_at == 1e11 and cheap.reached_at_cheapest


def test_device_seconds_axis_reads_the_device_seconds():
    table = rows(SWEEP, axis="device_seconds")
    assert table["interpolated"].grid == GridReference(1.0, 0.80, 100.0)
    assert table["interpolated"].aurac_at_grid_compute == 0.76
    assert table["interpolated"].reached_at == pytest.approx(10**2.5)


def test_without_a_budget_one_point_the_grid_is_read_at_its_largest_budget():
    sweep = {
        0.5: {"lora_grid": point(0.70, 1e11), "m": point(0.70, 1e11)},
        2.0: {"lora_grid": point(0.80, 1e12), "m": point(0.76, 1e12)},
        4.0: {"m": point(0.82, 1e13)},
    }
    m = rows(sweep)["m"]
    assert m.grid == GridReference(2.0, 0.80, 1e12)
    assert m.reached_at == pytest.approx(10**12.5)


def test_tolerance_moves_the_target():
    loose = rows(SWEEP, tolerance=0.04)["interpolated"]  # target 0.76: reached at 1e12 itself
    assert loose.reached_at == pytest.approx(1e12)
    assert math.isclose(loose.target, 0.76)


def test_a_sweep_without_the_grid_or_an_unknown_axis_is_refused():
    with pytest.raises(ValueError, match="no 'lora_grid' point in the sweep"):
        frontier_table({1.0: {"dylora": point(0.7, 1e11)}})
    with pytest.raises(ValueError, match="axis: 'tokens'"):
        frontier_table(SWEEP, axis="tokens")
