"""Selection and summary: which trials each arm's search chose and tested, each method scored
from them (rankstudy.core.scoring), and the summary a study ends with (study_summary.json, the
table the command prints).

Selection happened on validation, in the searcher (rankstudy.study.search.choose); this module only
reads what it chose.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rankstudy.core.arms import arm_rules, method_arms, method_rule, study_arms
from rankstudy.core.records import TrialResult
from rankstudy.core.scoring import score_method
from rankstudy.core.spec import StudySpec
from rankstudy.core.summaries import (
    MethodSummary,
    MlflowRefs,
    StudySummary,
    write_study_summary,
)
from rankstudy.core.verdict import study_verdict, verdict_lines
from rankstudy.study.state import StudyFiles, StudyState

Chosen = dict[tuple[str, str], dict[int, TrialResult]]  # (arm, rule) -> seed -> test result


def test_passes(spec: StudySpec, state: StudyState, seeds: list[int]) -> tuple[int, bool]:
    """How many test passes the study runs, and whether that is exact: an arm whose search
    ended has one per seed for each trial its rules chose (the searcher's own `choose`);
    an arm still searching counts one per rule and seed, the most it can have."""
    from rankstudy.study.search import Candidate, choose

    total, settled = 0, True
    for arm in study_arms(spec):
        rules = arm_rules(arm, spec)
        ended = [t for t in state.trials.values() if t.arm == arm and not t.superseded]
        if len(ended) < spec.search.trials_per_arm:
            total, settled = total + len(rules) * len(seeds), False
            continue
        ok = [
            Candidate(t.trial, t.out_dir, t.params, t.selection())
            for t in ended
            if t.status == "ok"
        ]
        total += len(choose(ok, rules)) * len(seeds)
    return total, settled


def chosen_results(
    spec: StudySpec, files: StudyFiles, seeds: list[int]
) -> tuple[Chosen, dict[tuple[str, str], str]]:
    """The results of the trials the search chose and tested, and (arm, rule) -> why
    nothing can be scored for it (a failed arm or test pass)."""
    chosen: Chosen = {}
    missing: dict[tuple[str, str], str] = {}
    for t in files.state.tests.values():
        for rule in t.rules:
            if t.status != "ok":
                missing[(t.arm, rule)] = (
                    f"the test pass of {t.key} at seed {t.seed} failed: {t.failure}"
                )
            else:
                chosen.setdefault((t.arm, rule), {})[t.seed] = files.result(t.out_dir)
    for arm in study_arms(spec):
        for rule in arm_rules(arm, spec):
            complete = len(chosen.get((arm, rule), {})) == len(seeds)
            if not complete and (arm, rule) not in missing:
                missing[(arm, rule)] = why_untested(arm, files)
    return chosen, missing


def why_untested(arm: str, files: StudyFiles) -> str:
    """Why an arm has no test pass to score: its search trials' failure, when they all failed
    (the first one's reason), else where its trials are."""
    trials = [t for t in files.state.trials.values() if t.arm == arm and not t.superseded]
    failed = [t for t in trials if t.status == "failed"]
    if trials and len(failed) == len(trials):
        which = "its only trial" if len(trials) == 1 else f"all {len(trials)} trials"
        return f"arm {arm}: {which} failed ({failed[0].failure})"
    return f"arm {arm}: no trial succeeded; see {files.storage.path_of(f'trials/{arm}')}"


def spent_dirs(files: StudyFiles, arm: str, rule: str | None = None) -> list[str]:
    """The folders of every result this arm spent compute on: search trials (those the
    search's scheduler stopped early too, with what they spent until then), test passes, seed
    repeats; with `rule`, only the test passes and repeats chosen for that rule (another
    rule's choice trained them for another served method)."""
    tests = [t for t in files.state.tests.values() if rule is None or rule in t.rules]
    records = [*files.state.trials.values(), *tests]
    return sorted({t.out_dir for t in records if t.arm == arm and t.status != "failed"})


def score_methods(
    spec: StudySpec,
    files: StudyFiles,
    chosen: Chosen,
    missing: dict,
    seeds: list[int],
    log: Callable[[str], None],
) -> tuple[dict[str, MethodSummary], dict[str, str], dict[str, list[TrialResult]]]:
    """(method -> its score, method -> why it is not scored, arm -> results it spent)."""
    methods, gaps = {}, {}
    read = {}  # each result.json read once
    for arm in study_arms(spec):
        read |= {d: files.result(d) for d in spent_dirs(files, arm)}
    results = {arm: [read[d] for d in spent_dirs(files, arm)] for arm in study_arms(spec)}
    for m in spec.methods:
        arms, rule = method_arms(m, spec), method_rule(m)
        why = [missing[(a, rule)] for a in arms if (a, rule) in missing]
        if why:
            gaps[m] = "; ".join(why)
            log(f"{m}: not scored: {gaps[m]}")
            continue
        paid = [read[d] for a in arms for d in spent_dirs(files, a, rule)]
        searched = sum(1 for t in files.state.trials.values() if t.arm in arms and not t.superseded)
        methods[m] = score_method(m, spec, chosen, paid, seeds, searched)
    return methods, gaps, results


def summarise(
    spec: StudySpec,
    spec_path: str,
    files: StudyFiles,
    chosen: Chosen,
    missing: dict,
    wall: float,
    log: Callable[[str], None],
) -> StudySummary:
    """Score every method whose arms have chosen, tested trials; name the others and why."""
    seeds = spec.seeds or [spec.seed]
    methods, gaps, results = score_methods(spec, files, chosen, missing, seeds, log)
    verdict = study_verdict(spec, methods, chosen, seeds, log)
    for name, m in methods.items():  # each method's own intervals, for its MLflow run
        if verdict is not None:
            m.intervals = verdict.intervals.methods[name]
    tested = [r for by_seed in chosen.values() for r in by_seed.values()]
    reference = next((r.reference for r in tested if r.reference is not None), None)
    # the base model's test scores, from the one test pass that measured them
    base = next((r.base_scores for r in tested if r.base_scores is not None), None)
    state = files.state
    return StudySummary(
        study=spec.name,
        spec=str(Path(spec_path).resolve()),
        seeds=seeds,
        wall_seconds=wall,
        # device time set-up took that every trial reuses (the planted task's calibration)
        shared_setup_seconds=sum(
            r.cost.shared_setup_seconds * r.cost.devices for rs in results.values() for r in rs
        ),
        methods=methods,
        missing=gaps,
        mlflow=MlflowRefs(
            tracking_uri=state.tracking_uri,
            experiment_id=state.experiment_id,
            parent_run_id=state.parent_run_id,
        ),
        verdict=verdict,
        reference=None if reference is None else {str(k): v for k, v in reference.items()},
        base_scores=base,
    )


def write_summary(out_dir: Path, summary: StudySummary) -> Path:
    return write_study_summary(out_dir, summary)


def _interval_cell(method: MethodSummary) -> str:
    i = method.intervals.aurac_log2 if method.intervals else None
    cell = f"[{i.low:.3f}, {i.high:.3f}]" if i else ""
    return f"{cell:>17}"


def summary_table(summary: StudySummary) -> str:
    """The methods side by side: AURAC (log2, linear), compute and device-seconds."""
    several = len(summary.seeds) > 1
    spread = f"{'± seeds':>8}" if several else ""
    level = summary.verdict.intervals.confidence if summary.verdict else None
    ci = f"{f'{level:.0%} interval':>17}" if level else ""
    lines = [
        f"{'method':<30}{'AURAC log2':>11}{ci}{spread}{'linear':>8}{'trials':>7}{'FLOPs':>10}"
        f"{'device-s':>10}"
    ]
    for name, m in summary.methods.items():
        spread = f"{m.aurac_log2_std:>8.3f}" if several else ""
        lines.append(
            f"{name:<30}{m.aurac_log2:>11.3f}{_interval_cell(m) if ci else ''}{spread}"
            f"{m.aurac_linear:>8.3f}{m.search_trials:>7}{m.cost.flops:>10.2e}"
            f"{m.cost.device_seconds:>10.1f}"
        )
    if summary.shared_setup_seconds:
        lines.append(
            f"task set-up shared by every trial (in no method's cost): "
            f"{summary.shared_setup_seconds:.1f} device-s"
        )
    for name, why in summary.missing.items():
        lines.append(f"{name:<30}   not scored: {why}")
    return "\n".join([*lines, *_closing_lines(summary), *verdict_lines(summary)])


def _closing_lines(summary: StudySummary) -> list[str]:
    """What the scores measure, the base model's scores, the planted reference's AURAC."""
    from rankstudy.core.aurac import aurac

    lines, metric = [], summary.metric
    if summary.methods:
        lines.append(f"AURAC of the test {metric} over the evaluation ranks")
    if summary.base_scores is not None:
        lines.append(
            "base model (no adapter): "
            + ", ".join(
                f"{metric if k == 'score' else k} {v:.3f}" for k, v in summary.base_scores.items()
            )
        )
    if summary.reference is not None:
        ranks = sorted(int(k) for k in summary.reference)
        scores = [summary.reference[str(r)] for r in ranks]
        lines.append(
            f"{'reference (planted, top-k)':<30}{aurac(ranks, scores):>11.3f}"
            f"{aurac(ranks, scores, 'linear'):>8.3f}"
        )
    return lines
