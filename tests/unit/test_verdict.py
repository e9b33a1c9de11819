"""The study's closing lines and their helpers, on summaries worked out by hand."""

import pytest

from rankstudy.core.verdict import pair_gap, seed_spread, verdict_lines
from rankstudy.core.verdict_records import Interval
from report_store import make_curve, make_intervals, make_study_summary, make_summary

INTERVALS = make_intervals(
    methods={
        "a": make_curve(aurac_log2={"point": 0.80, "low": 0.79, "high": 0.81}),
        "b": make_curve(aurac_log2={"point": 0.70, "low": 0.69, "high": 0.71}),
        "c": make_curve(aurac_log2={"point": 0.799, "low": 0.79, "high": 0.81}),
    },
    pairs={
        "a": {
            "b": make_curve(aurac_log2={"point": 0.10, "low": 0.08, "high": 0.12}, p_better=1.0),
            "c": make_curve(
                aurac_log2={"point": 0.001, "low": -0.002, "high": 0.004}, p_better=0.6
            ),
        },
        "b": {
            "c": make_curve(aurac_log2={"point": -0.099, "low": -0.11, "high": -0.09}, p_better=0)
        },
    },
)
CHOICE = {
    "method": "c",
    "rank": 2,
    "score": {"point": 0.75, "low": 0.74, "high": 0.76},
    "cost": 1e12,
    "best": {"method": "a", "rank": 4, "score": {"point": 0.76, "low": 0.75, "high": 0.77}},
    "candidates": ["a", "c"],
    "per_method": {"a": 4, "b": 1, "c": 2},
    "tolerance": 0.01,
}


def method(seed_curves):
    return make_summary(ranks=[1, 2, 4], scores_by_seed=seed_curves)


def test_pair_gap_reads_either_order():
    assert pair_gap(INTERVALS, "a", "b") == Interval(point=0.10, low=0.08, high=0.12)
    assert pair_gap(INTERVALS, "b", "a") == Interval(point=-0.10, low=-0.12, high=-0.08)


def test_seed_spread_is_the_std_of_the_per_seed_aurac_differences():
    # log2 axis x = 0, 1, 2: AURAC = ((s1 + s2) / 2 + (s2 + s4) / 2) / 2
    a = method({"0": [0.5, 0.5, 0.5], "1": [0.7, 0.7, 0.7]})
    b = method({"0": [0.4, 0.4, 0.4], "1": [0.4, 0.4, 0.4]})
    assert seed_spread({"a": a, "b": b}, "a", "b") == pytest.approx(0.1)  # gaps 0.1 and 0.3
    assert seed_spread({"a": method({"0": [0.5] * 3}), "b": b}, "a", "b") is None


def test_the_closing_lines_name_each_method_against_the_best():
    methods = {m: method({"0": [0.5] * 3, "1": [0.6] * 3}) for m in "abc"}
    verdict = {"intervals": INTERVALS, "recommendation": CHOICE}
    lines = verdict_lines(make_study_summary(methods=methods, verdict=verdict))
    assert lines[0].startswith("AURAC log2 against the best (a), paired 95% intervals")
    assert lines[1] == "  b - a: -0.100 [-0.120, -0.080], separated (over seeds: ±0.000)"
    assert lines[2] == "  c - a: -0.001 [-0.004, +0.002], not separated (over seeds: ±0.000)"
    assert lines[3].startswith("deploy: c at rank 2 (test score 0.750 [0.740, 0.760]")
    assert lines[4] == "smallest rank tied with each method's best: a 4, b 1, c 2"
    assert verdict_lines(make_study_summary(methods=methods)) == []  # no verdict: no lines
