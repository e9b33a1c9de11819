"""A study's verdict: which differences between methods are real, and which method and rank to
deploy, from each test example's score of every chosen trial (rankstudy.core.intervals).

The per-example scores come from the chosen trials' result.json (version 2); each method's
curve per seed is built as rankstudy.core.scoring builds its mean (the grid reads one arm per rank).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np

from rankstudy.core.arms import method_rule
from rankstudy.core.aurac import aurac
from rankstudy.core.intervals import draws_intervals, recommend, resample_curves
from rankstudy.core.scoring import rank_results
from rankstudy.core.spec import StudySpec
from rankstudy.core.summaries import MethodSummary, StudySummary
from rankstudy.core.verdict_records import Interval, StudyIntervals, Verdict

ONE_SEED = "one seed: the intervals cover the test examples only, not the variation between seeds"


def method_examples(method: str, spec: StudySpec, chosen: dict, seed: int, ranks: list[int]):
    """[len(ranks), n] test scores of each example at each rank, or None where a chosen
    trial recorded none (a result written before per-example scores)."""
    rule = method_rule(method)
    serving = rank_results(method, spec, chosen, seed)
    rows = []
    for r in ranks:
        scores = serving[r].examples.get("test", {}).get("score", {}).get(rule, {}).get(r)
        if scores is None:
            return None
        rows.append(scores)
    return np.asarray(rows, dtype=np.float64)


def study_verdict(
    spec: StudySpec,
    methods: dict[str, MethodSummary],
    chosen: dict,
    seeds: list[int],
    log: Callable[[str], None],
) -> Verdict | None:
    """The verdict on the scored methods, or None (said in the log) where the chosen trials hold
    no per-example scores."""
    if not methods:
        return None
    ranks = sorted(set.intersection(*(set(m.ranks) for m in methods.values())))
    examples = {}
    for name in methods:
        per_seed = {s: method_examples(name, spec, chosen, s, ranks) for s in seeds}
        if any(v is None for v in per_seed.values()):
            log(f"intervals: not computed ({name}'s chosen trials recorded no per-example scores)")
            return None
        examples[name] = per_seed
    v = spec.verdict
    draws = resample_curves(examples, v.resamples, v.seed)  # once: intervals and choice share it
    intervals = draws_intervals(ranks, draws, v.confidence, ONE_SEED if len(seeds) == 1 else None)
    cost = {name: m.cost.train_flops for name, m in methods.items()}
    choice = recommend(ranks, draws, cost, v.tolerance, v.confidence)
    return Verdict(intervals=intervals, recommendation=choice)


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def verdict_lines(summary: StudySummary) -> list[str]:
    """The closing lines: each method against the best by AURAC (log2), with its paired
    interval, separated or not, the spread of that difference over seeds, and the
    recommendation."""
    verdict = summary.verdict
    if verdict is None:
        return []
    intervals, choice = verdict.intervals, verdict.recommendation
    level = f"{intervals.confidence:.0%}"
    by_aurac, best = intervals.methods, intervals.best
    lines = [f"AURAC log2 against the best ({best}), paired {level} intervals over test examples:"]
    for name in by_aurac:
        if name == best:
            continue
        gap = pair_gap(intervals, name, best)
        state = "separated" if gap.separated else "not separated"
        spread = seed_spread(summary.methods, name, best)
        lines.append(
            f"  {name} - {best}: {_signed(gap.point)} "
            f"[{_signed(gap.low)}, {_signed(gap.high)}], {state}"
            + (f" (over seeds: ±{spread:.3f})" if spread is not None else "")
        )
    if intervals.note is not None:
        lines.append(f"  ({intervals.note})")
    score, best = choice.score, choice.best
    lines.append(
        f"deploy: {choice.method} at rank {choice.rank} (test score {score.point:.3f} "
        f"[{score.low:.3f}, {score.high:.3f}], training FLOPs {choice.cost:.2e}): the "
        f"smallest rank whose best score is tied with the best of all ({best.method} at rank "
        f"{best.rank}, {best.score.point:.3f}), and the cheapest method tied there "
        f"(tied: not separated, or within {choice.tolerance})"
    )
    lines.append(
        "smallest rank tied with each method's best: "
        + ", ".join(f"{m} {r}" for m, r in choice.per_method.items())
    )
    return lines


def seed_spread(methods: dict[str, MethodSummary], a: str, b: str) -> float | None:
    """The population std over seeds of a's AURAC (log2) minus b's, seed by seed: what the
    intervals over test examples leave out (None for one seed)."""
    ma, mb = methods[a], methods[b]
    seeds = sorted(set(ma.scores_by_seed) & set(mb.scores_by_seed))
    if len(seeds) < 2:
        return None
    gaps = [
        aurac(ma.ranks, ma.scores_by_seed[s]) - aurac(mb.ranks, mb.scores_by_seed[s]) for s in seeds
    ]
    return statistics.pstdev(gaps)


def p_better(intervals: StudyIntervals, a: str, b: str) -> float:
    """The share of resamples in which a's AURAC (log2) beats b's, whichever order the pair
    was stored in."""
    pairs = intervals.pairs
    if b in pairs.get(a, {}):
        return pairs[a][b].p_better
    return 1 - pairs[b][a].p_better


def pair_gap(intervals: StudyIntervals, a: str, b: str, axis: str = "aurac_log2") -> Interval:
    """a - b's interval on an AURAC axis, whichever order the pair was stored in."""
    pairs = intervals.pairs
    if b in pairs.get(a, {}):
        return getattr(pairs[a][b], axis)
    return getattr(pairs[b][a], axis).negated()
