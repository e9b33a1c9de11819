"""From chosen trials to a method's score: its test curve, AURAC (mean and spread over seeds)
and everything it cost. Selection happened on validation; this module only reads test scores
of trials already chosen."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from rankstudy.core.arms import method_arms, method_rule
from rankstudy.core.aurac import aurac
from rankstudy.core.methods import per_rank_runs, served
from rankstudy.core.records import TrialResult
from rankstudy.core.spec import StudySpec
from rankstudy.core.summaries import MethodCost, MethodSummary


def rank_results(method: str, spec: StudySpec, chosen: dict, seed: int) -> dict[int, TrialResult]:
    """Which test pass serves each rank of the method's curve at one seed: the grid's own arm
    per rank in S, else the method's one run at every rank it scored. chosen[(arm, rule)][seed]
    is a test pass's result."""
    rule = method_rule(method)
    if per_rank_runs(*served(method)):
        arms = zip(spec.adapters.rank_set, method_arms(method, spec), strict=True)
        return {r: chosen[(arm, rule)][seed] for r, arm in arms}
    one = chosen[(method_arms(method, spec)[0], rule)][seed]
    return dict.fromkeys(one.scores_by_rule[rule], one)


def test_curve(
    method: str, spec: StudySpec, chosen: dict, seed: int, metric: str | None = None
) -> dict[int, float]:
    """The method's test curve for one seed: the primary metric's, or an extra `metric`'s."""
    rule = method_rule(method)

    def curve(result: TrialResult) -> dict[int, float]:
        by_rule = result.scores_by_rule if metric is None else result.extra_scores[metric]
        return by_rule[rule]

    return {r: curve(result)[r] for r, result in rank_results(method, spec, chosen, seed).items()}


def _on_other_rules(result: TrialResult, rule: str | None, what: str) -> float:
    """Seconds or FLOPs the trial spent scoring rules other than `rule` (none without one)."""
    if rule is None:
        return 0.0
    return sum(getattr(c, what) for u, c in result.cost.eval_by_rule.items() if u != rule)


def total_cost(
    results: Iterable[TrialResult], price_per_device_hour: float | None, rule: str | None = None
) -> MethodCost:
    """Everything spent: every search trial, seed repeat and test pass of the method's arms;
    with `rule`, less what those trials spent scoring other rules (served to other methods)."""
    results = list(results)
    device_seconds = sum(
        r.cost.device_seconds - _on_other_rules(r, rule, "seconds") * r.cost.devices
        for r in results
    )
    hours = device_seconds / 3600
    return MethodCost(
        paid_runs=len(results),
        device_seconds=device_seconds,
        train_seconds=sum(r.cost.train_seconds for r in results),
        eval_seconds=sum(
            r.cost.eval_seconds - _on_other_rules(r, rule, "seconds") for r in results
        ),
        flops=sum(r.cost.flops - _on_other_rules(r, rule, "flops") for r in results),
        train_flops=sum(r.cost.train_flops for r in results),
        train_tokens=sum(r.cost.train_tokens for r in results),
        device_hours=hours,
        money=hours * price_per_device_hour if price_per_device_hour is not None else None,
    )


def score_method(
    method: str,
    spec: StudySpec,
    chosen: dict,
    spent: list[TrialResult],
    seeds: list[int],
    search_trials: int,
) -> MethodSummary:
    """ranks, mean scores, AURAC on both axes (mean and population std over seeds), cost; and
    the mean curve of every extra metric the trials scored. search_trials: how many search
    trials its arms ran (the study's state knows; `spent` holds its test passes too)."""
    curves = [test_curve(method, spec, chosen, s) for s in seeds]
    ranks = sorted(curves[0])
    first = next(iter(chosen.values()))[seeds[0]]
    extra = {m: [test_curve(method, spec, chosen, s, m) for s in seeds] for m in first.extra_scores}
    per_seed = {
        axis: [aurac(ranks, [c[r] for r in ranks], axis) for c in curves]
        for axis in ("log2", "linear")
    }
    return MethodSummary(
        metric=first.metric,
        ranks=ranks,
        scores=[statistics.fmean(c[r] for c in curves) for r in ranks],
        extra_scores={
            m: [statistics.fmean(c[r] for c in cs) for r in ranks] for m, cs in extra.items()
        },
        scores_by_seed={str(s): [c[r] for r in ranks] for s, c in zip(seeds, curves, strict=True)},
        aurac_log2=statistics.fmean(per_seed["log2"]),
        aurac_linear=statistics.fmean(per_seed["linear"]),
        aurac_log2_std=statistics.pstdev(per_seed["log2"]),
        aurac_linear_std=statistics.pstdev(per_seed["linear"]),
        inference_rule=method_rule(method),
        cost=total_cost(spent, spec.price_per_device_hour, method_rule(method)),
        search_trials=search_trials,
    )
