"""Studies written into an MLflow store through the platform's own tracking module, with the
same calls a study makes, and numbers the tests know in advance: for report tests of odd
shapes (a failed arm, many methods) and for the report benchmark."""

from __future__ import annotations

import math

from rankstudy.metrics import aurac
from rankstudy.scoring import total_cost
from rankstudy.tracking import StudyTracker


def score(method: int, rank: int, seed: int) -> float:
    """A plausible rank-accuracy curve: rising with log2 rank, higher for later methods."""
    return round(0.2 + 0.7 * (1 - 2 ** (-(math.log2(rank) + 1) * (0.3 + 0.05 * method))), 4) + (
        0.01 * seed
    )


def trial_result(method: int, ranks: list[int], seed: int, steps: int, test: bool) -> dict:
    """A result.json as a trial writes it (the fields tracking logs)."""
    curve = {str(r): score(method, r, seed) - 0.02 for r in ranks}
    result = {
        "method": f"m{method}",
        "max_rank": ranks[-1],
        "inference_rule": "scaled",
        "loss_curve": [3.0 * math.exp(-3 * s / steps) + 0.5 for s in range(steps)],
        "validation_scores_by_rule": {"scaled": curve},
        "validation_curve": [{"step": steps, "scores": curve}],
        "selection_metric": aurac(ranks, list(curve.values())),
        "selection_metric_by_rule": {"scaled": aurac(ranks, list(curve.values()))},
        "cost": {
            "device_seconds": 60.0 * (method + 1),
            "train_seconds": 50.0 * (method + 1),
            "eval_seconds": 10.0 * (method + 1),
            "flops": 1e12 * (method + 1),
            "train_tokens": 1e6 * steps,
        },
    }
    if test:
        result["scores_by_rule"] = {"scaled": {str(r): score(method, r, seed) for r in ranks}}
    return result


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
) -> dict:
    """Log a whole study: per method (m0, m1, ..., each its own arm) its search trials, its chosen
    trial's test passes at every seed and its summary run; a method in `failed` has every
    trial failed and no summary. Returns method -> the summary logged."""
    tracker = StudyTracker(uri, name)
    spec = {"name": name, "methods": [f"m{i}" for i in range(methods)], "seeds": seeds}
    tracker.start_study(name, spec)
    if reference:
        tracker.log_reference({str(r): score(methods, r, 0) for r in ranks})
    summaries = {}
    for i in range(methods):
        method = arm = f"m{i}"
        base = {"arm": arm, "method": method, "rank": f"1-{ranks[-1]}"}
        spent = []
        for t in range(trials_per_arm):
            fails = method in failed
            record = base | {
                "key": f"{arm}/t{t}",
                "trial": t,
                "params": {"training.lr": 10 ** (-3 + t / trials_per_arm)},
                "failure": "loss is NaN at step 3" if fails else None,
            }
            result = None if fails else trial_result(i, ranks, seeds[0], steps, test=False)
            tracker.log_trial(record, result)
            spent += [result] if result else []
        if method in failed:
            continue
        for s, seed in enumerate(seeds):
            key = f"{arm}/t0" if s == 0 else f"{arm}/t0-seed{seed}"
            record = base | {"key": key, "trial": 0, "params": {}, "failure": None}
            record |= {"seed": seed, "rules": ["scaled"]}
            tested = trial_result(i, ranks, seed, steps, test=True)
            tracker.log_trial(record, tested)
            if s == 0:  # the first seed's test pass resumes trial 0 in its folder: one run
                spent[0] = tested
            else:
                spent.append(tested)
        by_seed = {str(seed): [score(i, r, seed) for r in ranks] for seed in seeds}
        per_seed = [aurac(ranks, c) for c in by_seed.values()]
        mean = sum(per_seed) / len(per_seed)
        summary = {
            "ranks": ranks,
            "scores": [sum(c[j] for c in by_seed.values()) / len(seeds) for j in range(len(ranks))],
            "scores_by_seed": by_seed,
            "aurac_log2": mean,
            "aurac_linear": mean - 0.05,
            "aurac_log2_std": math.sqrt(sum((a - mean) ** 2 for a in per_seed) / len(per_seed)),
            "aurac_linear_std": 0.0,
            "cost": total_cost(spent, 2.5),
            "trials": trials_per_arm,
        }
        tracker.log_method(method, summary, None)
        summaries[method] = summary
    tracker.finish_study({"methods": summaries}, "FAILED" if failed else "FINISHED")
    return summaries
