"""A method summary in MLflow, both ways: `to_mlflow` gives what its summary run holds (the
tracker writes it), `from_mlflow` reads it back into a MethodSummary (the report reads it).
One module, so the names a method run's metrics go by (rankstudy.core.mlflow_names) are
turned into a summary's fields in one place.

What a method run holds: every number of the summary at step 0 (aurac_log2, aurac_linear and
their _std, trials: its search trials), cost_<field> for every known cost field (cost_trials:
the runs it paid for), the test curve (test_score), each extra metric's (test_<metric>) and each
seed's (test_score_seed<seed>) with step = rank, the ends of its intervals when the study has a
verdict, and its metric and inference rule as tags. The intervals themselves travel whole in
the study's verdict (VERDICT_ARTIFACT), so a summary read back has none.

MLflow-free: the tracker makes MLflow's own objects of these rows, the report fetches the
histories it is handed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from rankstudy.core import mlflow_names as names
from rankstudy.core.summaries import MethodCost, MethodSummary, PointEntry
from rankstudy.core.verdict_records import CurveIntervals

AURACS = ("log2", "linear", "log2_std", "linear_std")  # aurac_<these>: a method run's AURACs
TAG_LIMIT = 5000  # characters of a tag's value kept (MLflow refuses longer ones)


class Row(NamedTuple):
    """One metric value: key, value, step (a rank for a curve, 0 else)."""

    key: str
    value: float
    step: int


def to_mlflow(summary: MethodSummary) -> tuple[list[Row], dict[str, str]]:
    """The metrics and tags of a method's summary run."""
    rows = [Row(f"{names.AURAC_PREFIX}{k}", getattr(summary, f"aurac_{k}"), 0) for k in AURACS]
    rows.append(Row(names.TRIALS, summary.search_trials, 0))
    rows += [Row(f"{names.COST_PREFIX}{k}", v, 0) for k, v in summary.cost.numbers().items()]
    ranks = summary.ranks
    rows += curve_rows(names.TEST_SCORE, ranks, summary.scores)
    for metric, scores in summary.extra_scores.items():  # token_nll, ...: step = rank
        rows += curve_rows(names.curve_metric(names.TEST, metric), ranks, scores)
    for seed, scores in summary.scores_by_seed.items():  # the report draws their spread
        rows += curve_rows(names.seed_curve(seed), ranks, scores)
    rows += interval_rows(summary.intervals)
    tags = {names.METRIC_TAG: summary.metric}
    if summary.inference_rule is not None:
        tags[names.RULE_TAG] = summary.inference_rule
    return [Row(k, float(v), int(s)) for k, v, s in rows], tags


def curve_rows(key: str, ranks: list[int], scores: list[float]) -> list[Row]:
    return [Row(key, s, r) for r, s in zip(ranks, scores, strict=True)]


def interval_rows(intervals: CurveIntervals | None) -> list[Row]:
    """A method's interval ends: aurac_<axis>_low/_high, and test_score_low/_high with
    step = rank like the score."""
    rows = []
    for end in names.ENDS if intervals else ():
        for axis in ("log2", "linear"):
            key = f"{names.AURAC_PREFIX}{axis}"
            aurac = getattr(intervals, key)  # the field is named as the metric is
            rows.append(Row(names.interval_metric(key, end), getattr(aurac, end), 0))
        for r, i in intervals.scores.items():
            rows.append(Row(names.interval_metric(names.TEST_SCORE, end), getattr(i, end), r))
    return rows


def from_mlflow(
    tags: dict[str, str],
    metrics: dict[str, float],
    history: Callable[[str], dict[int, float]],
    metric: str = "score",
) -> MethodSummary:
    """The summary a method run holds. metrics: the run's latest values; history(key): a
    metric's step -> value; metric: what the scores measure, for a run logged before it was
    tagged (the spec's)."""
    curve = history(names.TEST_SCORE)
    ranks = sorted(curve)

    def at_ranks(key: str) -> list[float]:
        by_rank = history(key)
        return [by_rank[r] for r in ranks]

    test, score = f"{names.TEST}_", names.TEST_SCORE  # test_score*: not extra metrics
    seeds = sorted(k for k in metrics if k.startswith(names.SEED_CURVE_PREFIX))
    extra = [k for k in sorted(metrics) if k.startswith(test) and not k.startswith(score)]
    return MethodSummary(
        metric=tags.get(names.METRIC_TAG, metric),
        ranks=ranks,
        scores=[curve[r] for r in ranks],
        extra_scores={k.removeprefix(test): at_ranks(k) for k in extra},
        scores_by_seed={k.removeprefix(names.SEED_CURVE_PREFIX): at_ranks(k) for k in seeds},
        **{f"aurac_{k}": metrics[f"{names.AURAC_PREFIX}{k}"] for k in AURACS},
        inference_rule=tags.get(names.RULE_TAG),
        cost=cost_from_mlflow(metrics),
        search_trials=int(metrics.get(names.TRIALS, 0)),
    )


def cost_from_mlflow(metrics: dict[str, float]) -> MethodCost:
    cost = {
        k.removeprefix(names.COST_PREFIX): v
        for k, v in metrics.items()
        if k.startswith(names.COST_PREFIX)
    }
    counts = {k: int(cost[k]) for k in ("trials", "train_tokens") if k in cost}
    return MethodCost.model_validate({"money": None} | cost | counts)


def seed_count(metrics: dict[str, float]) -> int:
    """How many seeds a method run holds a test curve of."""
    return sum(k.startswith(names.SEED_CURVE_PREFIX) for k in metrics)


def point_from_mlflow(metrics: dict[str, float]) -> PointEntry | None:
    """A method run as a sweep's point (rankstudy.core.frontier reads it), from its latest
    values alone; None for a run with no AURAC."""
    aurac, cost = names.AURAC_PREFIX, names.COST_PREFIX
    if f"{aurac}log2" not in metrics:
        return None
    return PointEntry(
        aurac=metrics[f"{aurac}log2"],
        std=metrics.get(f"{aurac}log2_std", 0.0) if seed_count(metrics) > 1 else None,
        aurac_linear=metrics.get(f"{aurac}linear"),
        flops=metrics.get(f"{cost}flops", 0.0),
        device_seconds=metrics.get(f"{cost}device_seconds", 0.0),
        search_trials=int(metrics[names.TRIALS]) if names.TRIALS in metrics else None,
    )


def missing_tags(missing: dict[str, str]) -> dict[str, str]:
    """The study run's tags saying why each method it did not score is missing."""
    return {f"{names.MISSING_TAG_PREFIX}{m}": why[:TAG_LIMIT] for m, why in missing.items()}


def missing_from_tags(tags: dict[str, str]) -> dict[str, str]:
    """method -> why the study did not score it, as the study recorded it (empty for a study
    logged before it recorded reasons, or one not finished)."""
    prefix = names.MISSING_TAG_PREFIX
    return {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}
