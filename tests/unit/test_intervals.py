"""The paired bootstrap of intervals.py against a plain loop, metrics.aurac and scipy; separated
and tied pairs built to be so; deploy ranks and recommendations worked by hand; bad inputs."""

import json

import numpy as np
import pytest
from scipy import stats

from rankstudy.core.aurac import aurac
from rankstudy.core.intervals import (
    aurac_draws,
    deploy_rank,
    method_intervals,
    pair_intervals,
    recommend,
    resample_curves,
    study_intervals,
)
from rankstudy.core.verdict_records import Interval, Recommendation, StudyIntervals

RANKS = [1, 2, 4, 8]


def noisy(means, n, sd, rng, common=None):
    """Per-example scores [len(means), n]: each rank's mean plus noise (plus a shared part)."""
    x = np.asarray(means, float)[:, None] + sd * rng.standard_normal((len(means), n))
    return x if common is None else x + common


def loop_bootstrap(examples, resamples, seed):
    """The scheme as a plain loop over resamples, drawing indices with the same generator calls."""
    rng = np.random.default_rng(seed)
    seeds = sorted(next(iter(examples.values())))
    index = {}
    for s in seeds:
        n = next(iter(examples.values()))[s].shape[1]
        index[s] = rng.integers(0, n, size=(resamples, n))
    out = {}
    for name, by_seed in examples.items():
        rows = []
        for b in range(resamples):
            curves = [[row[index[s][b]].mean() for row in by_seed[s]] for s in seeds]
            rows.append(np.mean(curves, axis=0))
        out[name] = np.array(rows)
    return out


@pytest.mark.parametrize("axis", ["log2", "linear"])
@pytest.mark.parametrize("ranks", [[1, 2, 4, 8, 16], [2, 3, 32], [8, 1, 4, 2], [16]])
def test_vectorised_aurac_equals_metrics_aurac(axis, ranks):
    curves = np.random.default_rng(3).random((7, 5, len(ranks)))
    got = aurac_draws(ranks, curves, axis)
    assert got.shape == (7, 5)
    want = [[aurac(ranks, list(c), axis) for c in block] for block in curves]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_the_bootstrap_equals_a_plain_loop_and_aurac_on_every_resample():
    rng = np.random.default_rng(1)
    examples = {
        m: {s: rng.random((4, n)) for s, n in [(7, 13), (2, 21), (5, 9)]} for m in ("a", "b")
    }
    draws = resample_curves(examples, resamples=40, seed=11)
    want = loop_bootstrap(examples, 40, 11)
    for name in examples:
        np.testing.assert_allclose(draws[name].draws, want[name], rtol=0, atol=1e-12)
        for axis in ("log2", "linear"):
            per_resample = [aurac(RANKS, list(c), axis) for c in draws[name].draws]
            got = aurac_draws(RANKS, draws[name].draws, axis)
            np.testing.assert_allclose(got, per_resample, rtol=1e-12, atol=0)


def test_a_rank_interval_agrees_with_scipy_percentile_bootstrap():
    x = noisy([0.6], 200, 0.2, np.random.default_rng(2))
    draws = resample_curves({"m": {0: x}}, resamples=20000, seed=4)["m"]
    mine = method_intervals([1], draws).scores[1]
    ref = stats.bootstrap(
        (x[0],), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(5)
    ).confidence_interval
    se = x[0].std() / np.sqrt(200)
    assert mine.point == pytest.approx(x[0].mean())
    assert mine.low == pytest.approx(ref.low, abs=0.15 * se)
    assert mine.high == pytest.approx(ref.high, abs=0.15 * se)
    assert mine.low < mine.point < mine.high


def test_a_clearly_better_method_is_separated():
    rng = np.random.default_rng(6)
    b = noisy([0.3, 0.5, 0.6, 0.7], 150, 0.1, rng)
    a = b + 0.1 + 0.01 * rng.standard_normal(b.shape)
    d = resample_curves({"a": {0: a}, "b": {0: b}}, resamples=1000)
    better = pair_intervals(RANKS, d["a"], d["b"])
    assert better.aurac_log2.separated and better.aurac_linear.separated
    assert better.aurac_log2.low > 0.08 and better.p_better == 1.0
    assert all(i.separated for i in better.scores.values())
    worse = pair_intervals(RANKS, d["b"], d["a"])
    assert worse.aurac_log2.high < -0.08 and worse.p_better == 0.0


def test_independent_copies_of_one_method_are_rarely_separated():
    """A 95 % interval of a zero difference excludes 0 about 1 time in 20."""
    separated, p_better = 0, []
    for data_seed in range(20):
        rng = np.random.default_rng(100 + data_seed)
        b, c = (noisy([0.3, 0.5, 0.6, 0.7], 150, 0.1, rng) for _ in range(2))
        d = resample_curves({"c": {0: c}, "b": {0: b}}, resamples=500)
        pair = pair_intervals(RANKS, d["c"], d["b"])
        separated += pair.aurac_log2.separated
        p_better.append(pair.p_better)
    assert separated <= 3
    assert 0.1 < np.median(p_better) < 0.9


def test_pairing_removes_the_shared_per_example_part():
    rng = np.random.default_rng(7)
    common = rng.standard_normal(100)  # example difficulty, shared by both methods
    a = noisy([0.5, 0.6, 0.7, 0.7], 100, 0.01, rng, common)
    b = noisy([0.5, 0.6, 0.7, 0.7], 100, 0.01, rng, common)
    d = resample_curves({"a": {0: a}, "b": {0: b}}, resamples=1000)
    paired = pair_intervals(RANKS, d["a"], d["b"]).aurac_log2
    alone = resample_curves({"b": {0: b}}, resamples=1000, seed=1)["b"]  # other draws: unpaired
    unpaired = np.quantile(aurac_draws(RANKS, d["a"].draws - alone.draws), [0.025, 0.975])
    assert paired.high - paired.low < 0.05 * (unpaired[1] - unpaired[0])
    assert paired.high - paired.low < 0.01


def test_same_seed_same_output_other_seed_other_draws():
    rng = np.random.default_rng(8)
    examples = {m: {0: rng.random((4, 30)), 1: rng.random((4, 20))} for m in ("a", "b")}
    first = study_intervals(RANKS, examples, resamples=200, seed=3)
    assert first == study_intervals(RANKS, examples, resamples=200, seed=3)
    same = resample_curves(examples, 200, seed=3)["a"].draws
    np.testing.assert_array_equal(same, resample_curves(examples, 200, seed=3)["a"].draws)
    other = resample_curves(examples, 200, seed=4)["a"].draws
    assert not np.allclose(same, other)
    assert first != study_intervals(RANKS, examples, resamples=200, seed=4)


def test_two_seeds_of_different_sizes_average_the_seeds_means():
    rng = np.random.default_rng(9)
    x0, x1 = rng.random((4, 30)), rng.random((4, 50))
    d = resample_curves({"m": {0: x0, 1: x1}}, resamples=100)["m"]
    np.testing.assert_allclose(d.point, (x0.mean(axis=1) + x1.mean(axis=1)) / 2, atol=1e-15)
    assert d.draws.shape == (100, 4)
    out = study_intervals(RANKS, {"m": {1: x1, 0: x0}}, resamples=100)
    assert out.seeds == [0, 1] and out.examples == {0: 30, 1: 50}
    assert out.methods["m"].aurac_log2.point == pytest.approx(aurac(RANKS, d.point))


def test_study_intervals_is_json_and_holds_each_pair_once():
    rng = np.random.default_rng(10)
    examples = {m: {0: rng.random((4, 25))} for m in ("grid", "dylora", "matryoshka")}
    out = study_intervals(RANKS, examples, resamples=50)
    wire = out.model_dump(mode="json")
    assert json.loads(json.dumps(wire)) == wire and StudyIntervals.model_validate(wire) == out
    assert list(out.methods) == ["grid", "dylora", "matryoshka"]
    assert {a: list(bs) for a, bs in out.pairs.items()} == {
        "grid": ["dylora", "matryoshka"],
        "dylora": ["matryoshka"],
    }
    pair = wire["pairs"]["grid"]["dylora"]
    assert set(pair) == {"aurac_log2", "aurac_linear", "p_better", "scores"}
    assert list(pair["scores"]) == ["1", "2", "4", "8"]
    methods = out.methods
    want = methods["grid"].aurac_log2.point - methods["dylora"].aurac_log2.point
    assert out.pairs["grid"]["dylora"].aurac_log2.point == pytest.approx(want)


def interval(point: float, low: float, high: float) -> Interval:
    return Interval(point=point, low=low, high=high)


def test_interval_separation_negation_and_json():
    assert interval(0.1, 0.02, 0.2).separated and interval(-0.1, -0.2, -0.01).separated
    assert not interval(0.0, -0.1, 0.1).separated
    assert interval(0.1, 0.02, 0.2).negated() == interval(-0.1, -0.2, -0.02)
    assert interval(0.5, 0.4, 0.6).model_dump(mode="json") == {
        "point": 0.5,
        "low": 0.4,
        "high": 0.6,
    }


def one(x, resamples=500):
    return resample_curves({"m": {0: x}}, resamples=resamples)["m"]


def test_deploy_rank_of_a_flat_curve_is_the_first_rank():
    rng = np.random.default_rng(11)
    same = np.tile(rng.random(80), (4, 1))  # the same scores at every rank
    assert deploy_rank(RANKS, one(same), tolerance=0.0) == 1
    flat = noisy([0.6] * 4, 80, 0.2, rng)  # independent noise around one mean
    assert deploy_rank(RANKS, one(flat), tolerance=0.0) == 1


def test_deploy_rank_of_a_clearly_rising_curve_is_the_top_rank():
    rising = noisy([0.2, 0.4, 0.6, 0.8], 200, 0.05, np.random.default_rng(12))
    assert deploy_rank(RANKS, one(rising)) == 8


def test_deploy_rank_counts_a_separated_score_within_tolerance_as_tied():
    common = 0.1 * np.random.default_rng(13).standard_normal(100)
    x = np.array([0.5, 0.795, 0.8, 0.8])[:, None] + common  # differences are exact constants
    d = one(x)
    assert pair_intervals(RANKS[:2], one(x[:2]), one(x[:2])).p_better == 0.5
    assert deploy_rank(RANKS, d, tolerance=0.01) == 2  # 0.795 within 0.01 of 0.8
    assert deploy_rank(RANKS, d, tolerance=0.001) == 4  # rank 8 ties rank 4, the best


def exact(means_by_method, n=100):
    """Scores whose differences are exact constants: one shared per-example part."""
    common = 0.1 * np.random.default_rng(14).standard_normal(n)
    examples = {m: {0: np.array(mu)[:, None] + common} for m, mu in means_by_method.items()}
    return resample_curves(examples, resamples=300)


def test_recommend_picks_the_cheaper_tied_method_at_the_smallest_tied_rank():
    d = exact({"grid": [0.5, 0.8, 0.8, 0.8], "dylora": [0.5, 0.795, 0.79, 0.79]})
    out = recommend(RANKS, d, {"grid": 8.0, "dylora": 1.0}, tolerance=0.01)
    assert Recommendation.model_validate(json.loads(json.dumps(out.model_dump(mode="json")))) == out
    assert (out.method, out.rank, out.cost) == ("dylora", 2, 1.0)
    assert out.score.point == pytest.approx(0.795 + d["dylora"].point[0] - 0.5)
    assert (out.best.method, out.best.rank) == ("grid", 2)
    assert out.candidates == ["grid", "dylora"]
    assert out.per_method == {"grid": 2, "dylora": 2} and out.tolerance == 0.01
    strict = recommend(RANKS, d, {"grid": 8.0, "dylora": 1.0}, tolerance=0.001)
    assert (strict.method, strict.rank, strict.candidates) == ("grid", 2, ["grid"])


def test_recommend_reads_the_best_rank_over_methods():
    """Rank 2's best (matryoshka, 0.7) is separated from the best overall (grid at 4, 0.9);
    at rank 4 the grid leads and dylora (0.895) is within tolerance, so dylora at 4."""
    d = exact(
        {
            "grid": [0.3, 0.6, 0.9, 0.9],
            "dylora": [0.3, 0.5, 0.895, 0.88],
            "matryoshka": [0.3, 0.7, 0.8, 0.85],
        }
    )
    costs = {"grid": 8.0, "dylora": 2.0, "matryoshka": 1.0}
    out = recommend(RANKS, d, costs, tolerance=0.01)
    assert (out.method, out.rank, out.candidates) == ("dylora", 4, ["grid", "dylora"])
    assert out.per_method == {"grid": 4, "dylora": 4, "matryoshka": 8}


def test_recommend_counts_a_method_not_separated_by_its_interval_as_tied():
    rng = np.random.default_rng(15)
    common = rng.standard_normal(200)
    grid = noisy([0.3, 0.8, 0.8, 0.8], 200, 0.01, rng, common)
    cheap = (
        grid + np.array([0, -0.01, -0.01, -0.01])[:, None] + 0.2 * rng.standard_normal(grid.shape)
    )
    d = resample_curves({"grid": {0: grid}, "cheap": {0: cheap}}, resamples=1000)
    assert not pair_intervals(RANKS, d["cheap"], d["grid"]).scores[2].separated
    out = recommend(RANKS, d, {"grid": 4.0, "cheap": 1.0}, tolerance=0.0)
    assert (out.method, out.rank) == ("cheap", 2)
    assert set(out.candidates) == {"grid", "cheap"}


@pytest.mark.parametrize(
    "examples,match",
    [
        ({}, "no methods"),
        ({"a": {0: np.ones((4, 5))}, "b": {1: np.ones((4, 5))}}, "method 'b' has seeds"),
        ({"a": {0: np.ones((4, 5))}, "b": {0: np.ones((4, 6))}}, "seed 0 has 6 examples"),
        ({"a": {0: np.ones(5)}}, r"shape \(5,\)"),
        ({"a": {0: np.ones((4, 0))}}, "n_examples > 0"),
        ({"a": {0: np.ones((4, 5))}, "b": {0: np.ones((3, 5))}}, "3 ranks"),
        ({"a": {0: np.array([[0.5, np.nan]] * 4)}}, r"examples\['a'\]\[0\]: contains NaN"),
        ({"a": {}}, "no seeds"),
    ],
)
def test_bad_examples_are_named(examples, match):
    with pytest.raises(ValueError, match=match):
        resample_curves(examples, resamples=10)


def test_bad_arguments_are_named():
    x = {"a": {0: np.ones((4, 5))}, "b": {0: np.ones((4, 5))}}
    d = resample_curves(x, resamples=10)
    with pytest.raises(ValueError, match="resamples"):
        resample_curves(x, resamples=0)
    with pytest.raises(ValueError, match="not \\[B, 3\\]"):
        study_intervals([1, 2, 4], x, resamples=10)
    with pytest.raises(ValueError, match="must be increasing"):
        method_intervals([1, 4, 2, 8], d["a"])
    with pytest.raises(ValueError, match="confidence"):
        method_intervals(RANKS, d["a"], confidence=95)
    with pytest.raises(ValueError, match="not paired"):
        pair_intervals(RANKS, d["a"], resample_curves(x, resamples=10, seed=1)["b"])
    with pytest.raises(ValueError, match=r"no cost for \['b'\]"):
        recommend(RANKS, d, {"a": 1.0})
    with pytest.raises(ValueError, match="unknown axis"):
        aurac_draws(RANKS, np.ones(4), "log10")
    with pytest.raises(ValueError, match="last axis must be 4"):
        aurac_draws(RANKS, np.ones((2, 3)))
