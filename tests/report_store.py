"""Studies written into an MLflow store through the platform's own tracking module, with the
same calls a study makes, and numbers the tests know in advance: for report tests of odd
shapes (a failed arm, many methods, a budget sweep) and for the report benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rankstudy.core import mlflow_names as names
from rankstudy.core.aurac import aurac
from rankstudy.core.intervals import SCHEME, draws_intervals, recommend, resample_curves
from rankstudy.core.records import TrialCost, TrialRecord, TrialResult
from rankstudy.core.scoring import total_cost
from rankstudy.core.summaries import MethodCost, MethodSummary, MlflowRefs, StudySummary
from rankstudy.core.verdict import ONE_SEED
from rankstudy.core.verdict_records import StudyIntervals, Verdict
from rankstudy.tracking.tracker import StudyTracker

EXAMPLES = 200  # test examples per seed of a constructed verdict
RESAMPLES = 200  # its bootstrap resamples: enough for stable intervals, quick to draw


def make_result(**fields) -> TrialResult:
    """A whole result.json with neutral values (a one-rank validation-only run of 1 step):
    tests set the fields they read."""
    cost = {
        "train_seconds": 1.0,
        "eval_seconds": 0.0,
        "wall_seconds": 1.0,
        "shared_setup_seconds": 0.0,
        "device_seconds": 1.0,
        "devices": 1,
        "device_type": "cpu",
        "train_tokens": 0,
        "eval_tokens": 0,
        "flops": 0.0,
        "train_flops": 0.0,
        "peak_memory_bytes": 0,
    }
    fields["cost"] = TrialCost(**cost | fields.get("cost", {}))
    neutral = {
        "arm": "lora_r1",
        "method": "lora",
        "max_rank": 1,
        "train_ranks": [1],
        "seed": 0,
        "hparams": {"lr": 1e-3, "weight_decay": 0.0, "overrides": []},
        "inference_rule": "scaled",
        "metric": "score",
        "scores": {},
        "validation_scores": {1: 0.0},
        "scores_by_rule": {},
        "validation_scores_by_rule": {"scaled": {1: 0.0}},
        "extra_scores": {},
        "validation_extra_scores": {},
        "selection_metric": 0.0,
        "selection_metric_by_rule": {"scaled": 0.0},
        "aurac": {},
        "loss_curve": [1.0],
        "validation_curve": [],
        "steps": 1,
        "resumed_from": [],
    }
    return TrialResult.model_validate(neutral | fields)


def make_cost(**fields) -> MethodCost:
    """A method's cost with neutral values: tests set the fields they read."""
    neutral = {
        "paid_runs": 1,
        "device_seconds": 0.0,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "flops": 0.0,
        "train_flops": 0.0,
        "train_tokens": 0,
        "device_hours": 0.0,
        "money": None,
    }
    return MethodCost.model_validate(neutral | fields)


def make_summary(**fields) -> MethodSummary:
    """A whole method summary with neutral values (one seed, one rank at 0.5): tests set the
    fields they read; `cost` a MethodCost, or a dict of the cost fields they read."""
    cost = fields.get("cost", {})
    fields["cost"] = cost if isinstance(cost, MethodCost) else make_cost(**cost)
    ranks = fields.get("ranks", [1])
    neutral = {
        "metric": "score",
        "ranks": ranks,
        "scores": [0.5] * len(ranks),
        "scores_by_seed": {"0": [0.5] * len(ranks)},
        "aurac_log2": 0.5,
        "aurac_linear": 0.5,
        "aurac_log2_std": 0.0,
        "aurac_linear_std": 0.0,
        "inference_rule": "scaled",
        "search_trials": 1,
    }
    return MethodSummary.model_validate(neutral | fields)


def make_study_summary(**fields) -> StudySummary:
    """A whole study summary with neutral values: tests set the fields they read."""
    neutral = {
        "study": "study",
        "spec": "/spec.yaml",
        "seeds": [0],
        "wall_seconds": 1.0,
        "shared_setup_seconds": 0.0,
        "methods": {},
        "missing": {},
        "mlflow": MlflowRefs(tracking_uri="sqlite:///m.db", experiment_id="1", parent_run_id="p"),
    }
    return StudySummary.model_validate(neutral | fields)


def score(method: int, rank: int, seed: int) -> float:
    """A plausible rank-accuracy curve: rising with log2 rank, higher for later methods."""
    return round(0.2 + 0.7 * (1 - 2 ** (-(math.log2(rank) + 1) * (0.3 + 0.05 * method))), 4) + (
        0.01 * seed
    )


def trial_result(method: int, ranks: list[int], seed: int, steps: int, test: bool) -> TrialResult:
    """A trial's result with known curves and cost (the fields tracking logs)."""
    curve = {r: score(method, r, seed) - 0.02 for r in ranks}
    result = make_result(
        arm=f"m{method}",
        method=f"m{method}",
        max_rank=ranks[-1],
        train_ranks=ranks,
        seed=seed,
        loss_curve=[3.0 * math.exp(-3 * s / steps) + 0.5 for s in range(steps)],
        validation_scores=curve,
        validation_scores_by_rule={"scaled": curve},
        validation_curve=[{"step": steps, "scores": curve}],
        selection_metric=aurac(ranks, list(curve.values())),
        selection_metric_by_rule={"scaled": aurac(ranks, list(curve.values()))},
        steps=steps,
        cost={
            "device_seconds": 60.0 * (method + 1),
            "train_seconds": 50.0 * (method + 1),
            "eval_seconds": 10.0 * (method + 1),
            "flops": 1e12 * (method + 1),
            "train_flops": 8e11 * (method + 1),
            "train_tokens": int(1e6 * steps),
        },
    )
    if test:
        tested = {r: score(method, r, seed) for r in ranks}
        result = result.model_copy(update={"scores": tested, "scores_by_rule": {"scaled": tested}})
    return result


def example_scores(method: int, ranks: list[int], seed: int) -> np.ndarray:
    """[len(ranks), EXAMPLES] per-example test scores whose means are exactly the curve `score`
    gives: noise each seed's examples share across methods (so the comparison is paired) plus
    the method's own, centred on zero."""
    shared = np.random.default_rng(seed).normal(0, 0.3, EXAMPLES)
    own = np.random.default_rng([seed, method]).normal(0, 0.5, (len(ranks), EXAMPLES))
    noise = shared + own
    noise -= noise.mean(axis=1, keepdims=True)
    return np.array([[score(method, r, seed)] for r in ranks]) + noise


def make_verdict(summaries: dict, ranks: list[int], seeds: list[int]) -> Verdict:
    """The verdict rankstudy.core.verdict.study_verdict makes of the methods fill_study logged
    (summaries: method "m<i>" -> summary), from constructed per-example scores: intervals of
    every method and pair, and the recommendation. The same every call, so a test remakes the
    verdict a study logged to compare with what the report shows."""
    examples = {m: {s: example_scores(int(m[1:]), ranks, s) for s in seeds} for m in summaries}
    draws = resample_curves(examples, RESAMPLES, 0)
    intervals = draws_intervals(ranks, draws, 0.95, ONE_SEED if len(seeds) == 1 else None)
    costs = {m: s.cost.train_flops for m, s in summaries.items()}
    return Verdict(intervals=intervals, recommendation=recommend(ranks, draws, costs, 0.01))


NO_INTERVAL = {"point": 0.0, "low": 0.0, "high": 0.0}


def make_curve(**fields) -> dict:
    """A method's intervals (with p_better, a pair's), zero where the test sets none."""
    return {"aurac_log2": NO_INTERVAL, "aurac_linear": NO_INTERVAL, "scores": {}} | fields


def make_intervals(**fields) -> StudyIntervals:
    """A study's intervals with neutral values (one seed, one rank, no methods): tests set the
    fields they read, methods and pairs as make_curve's."""
    neutral = {
        "scheme": SCHEME,
        "resamples": RESAMPLES,
        "seed": 0,
        "confidence": 0.95,
        "seeds": [0],
        "examples": {0: EXAMPLES},
        "methods": {},
        "pairs": {},
        "ranks": [1],
    }
    return StudyIntervals.model_validate(neutral | fields)


def fill_study(
    uri: str,
    name: str,
    methods: int,
    ranks: list[int],
    seeds: list[int],
    trials_per_arm: int,
    steps: int,
    failed: frozenset[str] = frozenset(),
    reference: bool = True,
    verdict: bool = False,
    searches: Path | None = None,
) -> dict[str, MethodSummary]:
    """Log a whole study: per method (m0, m1, ..., each its own arm) its search trials, its chosen
    trial's test passes at every seed and its summary run; a method in `failed` has every
    trial failed and no summary. verdict: the study ends with make_verdict's, each summary
    holding its method's intervals, as a study with per-example scores does. searches: an
    Optuna storage file, logged as a study logs its own. Returns method -> the summary
    logged."""
    tracker = StudyTracker(uri, name)
    spec = {"name": name, "methods": [f"m{i}" for i in range(methods)], "seeds": seeds}
    tracker.start_study(name, spec)
    if reference:
        tracker.log_reference({str(r): score(methods, r, 0) for r in ranks})
    summaries = {}
    for i in range(methods):
        method = arm = f"m{i}"
        base = {"arm": arm, "method": method, "rank": f"1-{ranks[-1]}", "out_dir": ""}
        spent = []
        for t in range(trials_per_arm):
            fails = method in failed
            result = None if fails else trial_result(i, ranks, seeds[0], steps, test=False)
            record = TrialRecord(
                **base,
                key=f"{arm}/t{t}",
                trial=t,
                params={"training.lr": 10 ** (-3 + t / trials_per_arm)},
                status="failed" if fails else "ok",
                failure="loss is NaN at step 3" if fails else None,
                selection_metric=None if fails else result.selection_metric,
            )
            tracker.log_trial(record, result)
            spent += [result] if result else []
        if method in failed:
            continue
        for s, seed in enumerate(seeds):
            key = f"{arm}/t0" if s == 0 else f"{arm}/t0-seed{seed}"
            tested = trial_result(i, ranks, seed, steps, test=True)
            record = TrialRecord(
                **base,
                key=key,
                trial=0,
                params={},
                status="ok",
                failure=None,
                selection_metric=tested.selection_metric,
                seed=seed,
                rules=["scaled"],
            )
            tracker.log_trial(record, tested)
            if s == 0:  # the first seed's test pass resumes trial 0 in its folder: one run
                spent[0] = tested
            else:
                spent.append(tested)
        by_seed = {str(seed): [score(i, r, seed) for r in ranks] for seed in seeds}
        per_seed = [aurac(ranks, c) for c in by_seed.values()]
        mean = sum(per_seed) / len(per_seed)
        summaries[method] = MethodSummary(
            metric="score",
            ranks=ranks,
            scores=[sum(c[j] for c in by_seed.values()) / len(seeds) for j in range(len(ranks))],
            scores_by_seed=by_seed,
            aurac_log2=mean,
            aurac_linear=mean - 0.05,
            aurac_log2_std=math.sqrt(sum((a - mean) ** 2 for a in per_seed) / len(per_seed)),
            aurac_linear_std=0.0,
            inference_rule="scaled",
            cost=total_cost(spent, 2.5),
            search_trials=trials_per_arm,
        )
    study = make_study_summary(study=name, seeds=seeds, methods=summaries)
    if verdict and summaries:
        study.verdict = make_verdict(summaries, ranks, seeds)
        for method, summary in summaries.items():
            summary.intervals = study.verdict.intervals.methods[method]
    for method, summary in summaries.items():
        tracker.log_method(method, summary, None, study.verdict)
    if searches is not None:
        tracker.log_searches(searches)
    tracker.finish_study(study, "FAILED" if failed else "FINISHED")
    return summaries


def point_summary(point: dict[str, float], ranks: list[int]) -> MethodSummary:
    """A method's summary at one budget point whose AURAC, spread and cost are `point`'s: a
    flat curve at the AURAC, and two seeds at AURAC - std and AURAC + std (population spread
    std, mean the AURAC); one seed, at the AURAC, when std is None."""
    a, std, seconds = point["aurac"], point["std"], point["device_seconds"]
    by_seed = {"0": [a - std] * len(ranks), "1": [a + std] * len(ranks)} if std is not None else {}
    return make_summary(
        ranks=ranks,
        scores=[a] * len(ranks),
        scores_by_seed=by_seed or {"0": [a] * len(ranks)},
        aurac_log2=a,
        aurac_log2_std=std or 0.0,
        aurac_linear=a,
        aurac_linear_std=std or 0.0,
        cost={"device_seconds": seconds, "device_hours": seconds / 3600, "flops": point["flops"]},
    )


def fill_sweep(
    uri: str, experiment: str, sweep: str, points: dict, ranks: list[int] = (1, 2, 4)
) -> dict[float, str]:
    """Log a budget sweep the way its points record it: per budget a study run in one
    experiment, tagged with the sweep's name and the budget, and one summary run per method
    holding `points` (frontier.py's input: {budget: {method: {aurac, std, flops,
    device_seconds}}}). Returns budget -> the point's parent run id."""
    tracker = StudyTracker(uri, experiment)
    runs = {}
    for budget, methods in points.items():
        name = f"{sweep}-x{budget:g}"
        spec = {"name": name, "methods": list(methods), "seeds": [0, 1]}
        parent = tracker.start_study(name, spec)
        tracker.client.set_tag(parent, names.SWEEP_TAG, sweep)
        tracker.client.set_tag(parent, names.BUDGET_TAG, str(float(budget)))
        summaries = {m: point_summary(p, list(ranks)) for m, p in methods.items()}
        for method, summary in summaries.items():
            tracker.log_method(method, summary, None)
        tracker.finish_study(make_study_summary(study=name, methods=summaries))
        runs[budget] = parent
    return runs
