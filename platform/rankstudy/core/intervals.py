"""Intervals for a study's curves and AURACs: which differences between methods are real
(DESIGN.md section 10).

Every method is scored on the same test examples (each seed has its own test set, shared by all
methods at that seed), so the comparison is paired. The scheme:

1. For each seed independently, in sorted seed order, draw B resamples of that seed's example
   indices with replacement: ``rng.integers(0, n_seed, size=(B, n_seed))`` with
   ``rng = np.random.default_rng(bootstrap_seed)``, one generator for the whole study. The same
   index draws serve every method and every rank.
2. On each resample, recompute each method's per-rank score (the mean over the drawn examples)
   and average the seeds' curves, as the point estimate does.
3. Compute the AURAC (log2 and linear axes, as `metrics.aurac`) of every resampled curve, and
   read percentile intervals (95 % by default) of scores, AURACs and paired differences.

A difference is "separated" when its interval excludes 0. The intervals and the recommendation
are typed records (rankstudy.core.verdict_records). numpy only (no torch): the report and the
summary read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rankstudy.core.aurac import AXES, rank_axis
from rankstudy.core.verdict_records import (
    CurveIntervals,
    Interval,
    MethodAtRank,
    PairIntervals,
    Recommendation,
    StudyIntervals,
)

ROUNDING = 1e-12  # a score within the tolerance up to float rounding is within it
TIE_TOLERANCE = 0.01  # scores this close to the best tie with it (the spec's tolerance)
SCHEME = (
    "paired percentile bootstrap: per seed, resample that seed's test examples with replacement "
    "(the same draws for every method and rank), recompute per-rank means, average the seeds' "
    "curves, then AURAC"
)


@dataclass(frozen=True, eq=False)
class Draws:
    """One method's curve and its resampled curves. `key` fixes the index draws (bootstrap seed,
    resamples, (seed, examples) per seed): equal keys mean the same resampled examples, which
    a paired comparison needs."""

    point: np.ndarray  # [n_ranks]: the seeds' per-rank means, averaged over seeds
    draws: np.ndarray  # [B, n_ranks]: the same on each resample
    key: tuple


def _check_examples(examples: Mapping[str, Mapping[int, np.ndarray]]) -> dict[int, int]:
    """seed -> example count, after checking every method has the same seeds, shapes and counts
    and no NaN: a paired resample needs all methods scored on the same examples."""
    if not examples:
        raise ValueError("examples: no methods")
    first = next(iter(examples))
    seeds = sorted(examples[first])
    if not seeds:
        raise ValueError(f"examples: method {first!r} has no seeds")
    counts, n_ranks = {}, None
    for name, by_seed in examples.items():
        if sorted(by_seed) != seeds:
            raise ValueError(
                f"examples: method {name!r} has seeds {sorted(by_seed)}, {first!r} has {seeds}"
            )
        for s in seeds:
            x = np.asarray(by_seed[s])
            where = f"examples[{name!r}][{s}]"
            if x.ndim != 2 or x.shape[1] == 0:
                raise ValueError(f"{where}: shape {x.shape}, expected [n_ranks, n_examples > 0]")
            n_ranks = x.shape[0] if n_ranks is None else n_ranks
            if x.shape[0] != n_ranks:
                raise ValueError(f"{where}: {x.shape[0]} ranks, other arrays have {n_ranks}")
            if counts.setdefault(s, x.shape[1]) != x.shape[1]:
                raise ValueError(
                    f"{where}: seed {s} has {x.shape[1]} examples here, {counts[s]} in another"
                    " method (a seed's methods must share its test set)"
                )
            if not np.isfinite(x).all():
                raise ValueError(f"{where}: contains NaN or inf")
    return counts


def resample_curves(
    examples: Mapping[str, Mapping[int, np.ndarray]], resamples: int = 2000, seed: int = 0
) -> dict[str, Draws]:
    """Each method's seed-averaged curve and its B paired resamples (the module's scheme).

    examples: method -> seed -> per-example scores [n_ranks, n_examples of that seed]. A
    resample's per-rank mean is counts @ scores.T / n, counts being how often it drew each
    example: the same numbers as the mean over the drawn rows, without a [B, n] gather per rank.
    """
    if resamples < 1:
        raise ValueError(f"resamples: {resamples}, need at least 1")
    counts = _check_examples(examples)
    rng = np.random.default_rng(seed)
    sums = {name: 0.0 for name in examples}
    for s in sorted(counts):
        n = counts[s]
        index = rng.integers(0, n, size=(resamples, n))
        flat = (index + n * np.arange(resamples)[:, None]).ravel()
        drawn = np.bincount(flat, minlength=resamples * n).reshape(resamples, n) / n
        for name, by_seed in examples.items():
            sums[name] = sums[name] + drawn @ np.asarray(by_seed[s], dtype=float).T
    key = (seed, resamples, tuple(sorted(counts.items())))
    k = len(counts)
    return {
        name: Draws(
            point=np.mean([np.asarray(by_seed[s], float).mean(axis=1) for s in sorted(counts)], 0),
            draws=sums[name] / k,
            key=key,
        )
        for name, by_seed in examples.items()
    }


def _rank_xs(ranks: Sequence[int], axis: str) -> np.ndarray:
    """The x of each rank on an axis, after the checks metrics.aurac makes."""
    return np.array(rank_axis(ranks, axis))


def aurac_draws(ranks: Sequence[int], values: np.ndarray, axis: str = "log2") -> np.ndarray:
    """metrics.aurac over the last axis of values [..., n_ranks], for every leading index."""
    values = np.asarray(values, dtype=float)
    xs = _rank_xs(ranks, axis)
    if values.shape[-1:] != (len(ranks),):
        raise ValueError(f"values: shape {values.shape}, last axis must be {len(ranks)} ranks")
    order = np.argsort(xs)
    xs, ys = xs[order], values[..., order]
    if len(xs) == 1:
        return ys[..., 0]
    area = (np.diff(xs) * (ys[..., :-1] + ys[..., 1:]) / 2).sum(axis=-1)
    return area / (xs[-1] - xs[0])


def _check_ranks(ranks: Sequence[int], *draws: Draws) -> list[int]:
    """Ranks as plain ints, increasing, one per column of every curve."""
    ranks = [int(r) for r in ranks]
    _rank_xs(ranks, "linear")
    if ranks != sorted(ranks):
        raise ValueError(f"ranks: {ranks} must be increasing")
    for d in draws:
        if d.point.shape != (len(ranks),) or d.draws.shape[1:] != (len(ranks),):
            raise ValueError(f"draws: curves have shape {d.draws.shape}, not [B, {len(ranks)}]")
    return ranks


def _check_paired(*draws: Draws) -> None:
    if len({d.key for d in draws}) > 1:
        raise ValueError("draws: not resampled together (different keys), so they are not paired")


def _interval(point: float, draws: np.ndarray, confidence: float) -> Interval:
    """The percentile interval of draws [B] around a point estimate."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: {confidence}, must lie strictly between 0 and 1")
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(point=float(point), low=float(low), high=float(high))


def _curve_intervals(ranks, point, draws, confidence) -> dict:
    """AURAC (both axes) and per-rank intervals of one curve, a method's or a difference's: the
    fields of its CurveIntervals."""
    out = {
        f"aurac_{axis}": _interval(
            aurac_draws(ranks, point, axis), aurac_draws(ranks, draws, axis), confidence
        )
        for axis in AXES
    }
    out["scores"] = {r: _interval(point[j], draws[:, j], confidence) for j, r in enumerate(ranks)}
    return out


def method_intervals(
    ranks: Sequence[int], draws: Draws, confidence: float = 0.95
) -> CurveIntervals:
    """One method's AURAC (both axes) and per-rank score intervals."""
    ranks = _check_ranks(ranks, draws)
    return CurveIntervals(**_curve_intervals(ranks, draws.point, draws.draws, confidence))


def pair_intervals(
    ranks: Sequence[int], a: Draws, b: Draws, confidence: float = 0.95
) -> PairIntervals:
    """a - b, paired: AURAC and per-rank differences, and p_better, the share of resamples in
    which a's log2 AURAC beats b's (ties count half)."""
    ranks = _check_ranks(ranks, a, b)
    _check_paired(a, b)
    out = _curve_intervals(ranks, a.point - b.point, a.draws - b.draws, confidence)
    diff = aurac_draws(ranks, a.draws) - aurac_draws(ranks, b.draws)
    return PairIntervals(**out, p_better=float(np.mean((diff > 0) + 0.5 * (diff == 0))))


def study_intervals(
    ranks: Sequence[int],
    examples: Mapping[str, Mapping[int, np.ndarray]],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> StudyIntervals:
    """Everything a report shows of a study's uncertainty: each method's intervals and, for
    each pair a before b in the given method order, pairs[a][b] = a - b."""
    return draws_intervals(ranks, resample_curves(examples, resamples, seed), confidence)


def draws_intervals(
    ranks: Sequence[int], draws: dict[str, Draws], confidence: float, note: str | None = None
) -> StudyIntervals:
    """study_intervals from draws already made (a caller that also recommends from them), with
    the caller's note on what they leave out."""
    names = list(draws)
    seed, resamples, counts = draws[names[0]].key
    counts = dict(counts)
    return StudyIntervals(
        scheme=SCHEME,
        resamples=resamples,
        seed=seed,
        confidence=confidence,
        seeds=[int(s) for s in counts],
        examples={int(s): int(n) for s, n in counts.items()},
        methods={m: method_intervals(ranks, draws[m], confidence) for m in names},
        pairs={
            a: {b: pair_intervals(ranks, draws[a], draws[b], confidence) for b in names[i:]}
            for i, a in enumerate(names[:-1], start=1)
        },
        ranks=_check_ranks(ranks),
        note=note,
    )


def _tied(gap: Interval, tolerance: float) -> bool:
    """A score difference from a best score: not separated, or its point within tolerance."""
    return not gap.separated or abs(gap.point) <= tolerance + ROUNDING


def _gap(x: Draws, j: int, best: Draws, k: int, confidence: float) -> Interval:
    """score x[rank j] - score best[rank k], paired."""
    return _interval(x.point[j] - best.point[k], x.draws[:, j] - best.draws[:, k], confidence)


def deploy_rank(
    ranks: Sequence[int], draws: Draws, tolerance: float = TIE_TOLERANCE, confidence: float = 0.95
) -> int:
    """The smallest rank whose score is tied with the method's best rank's score: the paired
    interval of score[r] - score[best] contains 0, or the points lie within tolerance. Best is
    the rank with the highest point score (the smallest such rank on a tie)."""
    ranks = _check_ranks(ranks, draws)
    best = int(np.argmax(draws.point))
    for j, r in enumerate(ranks):
        if _tied(_gap(draws, j, draws, best, confidence), tolerance):
            return r
    raise AssertionError("unreachable: the best rank is tied with itself")


def recommend(
    ranks: Sequence[int],
    draws_by_method: Mapping[str, Draws],
    cost_by_method: Mapping[str, float],
    tolerance: float = TIE_TOLERANCE,
    confidence: float = 0.95,
) -> Recommendation:
    """What to deploy. The deploy rank is the smallest rank at which the best method there is
    tied (paired interval contains 0, or within tolerance) with the best (method, rank) overall;
    at that rank, deploy the cheapest method tied with that rank's best method (method order
    breaks cost ties). per_method gives each method's own deploy_rank."""
    names = list(draws_by_method)
    if not names:
        raise ValueError("draws_by_method: no methods")
    missing = [m for m in names if m not in cost_by_method]
    if missing:
        raise ValueError(f"cost_by_method: no cost for {missing}")
    ranks = _check_ranks(ranks, *draws_by_method.values())
    _check_paired(*draws_by_method.values())
    d = draws_by_method
    top = max(names, key=lambda m: d[m].point.max())  # first in method order on a tie
    k = int(np.argmax(d[top].point))
    for j, _ in enumerate(ranks):
        leader = max(names, key=lambda m, j=j: d[m].point[j])
        if _tied(_gap(d[leader], j, d[top], k, confidence), tolerance):
            break
    tied = [m for m in names if _tied(_gap(d[m], j, d[leader], j, confidence), tolerance)]
    pick = min(tied, key=lambda m: cost_by_method[m])
    score = method_intervals(ranks, d[pick], confidence).scores[ranks[j]]
    best = method_intervals(ranks, d[top], confidence).scores[ranks[k]]
    return Recommendation(
        method=pick,
        rank=ranks[j],
        score=score,
        cost=float(cost_by_method[pick]),
        best=MethodAtRank(method=top, rank=ranks[k], score=best),
        candidates=tied,
        per_method={m: deploy_rank(ranks, d[m], tolerance, confidence) for m in names},
        tolerance=tolerance,
    )
