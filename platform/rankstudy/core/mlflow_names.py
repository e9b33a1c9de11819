"""The names a study's MLflow records go by: tags, run kinds, metrics and artifacts.

Defined once, because two sides must agree on them: the writer (rankstudy.tracking.tracker) and the
report that reads them back (rankstudy_report). Recorded studies hold these exact strings, so
they are never renamed. Nothing here imports MLflow.
"""

from __future__ import annotations

# Tags MLflow itself reads: the parent run a child belongs to, and a run's display name.
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

# Which kind of run a run is, and (trial and method runs) its key in the study,
# by which a resumed study finds what it logged instead of logging it twice.
KIND_TAG = "rankstudy.kind"
STUDY, TRIAL, METHOD = "study", "trial", "method"
MODEL = "model"  # a run that logged a registered model version (rankstudy.study.registry)
TRIAL_KEY_TAG = "rankstudy.trial_key"
CREATION_TAG = "rankstudy.creation"  # a token per create_run call: finds a retried POST's copy
VERSION_TAG_PREFIX = "version."  # + package name, on the study run: what made the numbers
# Tags of a budget sweep's study runs: every point of a sweep records into one experiment, each
# point's parent run naming its sweep (the base study's name) and its budget multiplier.
SWEEP_TAG = "rankstudy.sweep"
BUDGET_TAG = "rankstudy.budget"  # str(float): "0.25", "1.0", "4.0"
# + a swept spec field (`rankstudy.setting.training.lr`): the point's value of it, as JSON; the
# report's regime map reads a sweep's settings from these
SETTING_TAG_PREFIX = "rankstudy.setting."

# Tags of a trial run (method runs carry METHOD_TAG too).
ARM_TAG, METHOD_TAG, RANK_TAG, TRIAL_TAG, SEED_TAG = "arm", "method", "rank", "trial", "seed"
STATUS_TAG = "status"
OK, FAILED, CHOSEN, STOPPED = "ok", "failed", "chosen", "stopped"  # its values
STOPPED_AT_TAG = "stopped_at"  # the step the search's scheduler (ASHA) stopped a trial at
CHOSEN_FOR_TAG = "chosen_for"  # the inference rules a chosen trial was tested for, comma-joined
FAILURE_TAG = "failure"
# Tags of a method run: what its scores measure and the rule it is served with (runs logged
# before these tags carry neither; the report then takes the spec's metric).
METRIC_TAG = "rankstudy.metric"
RULE_TAG = "rankstudy.inference_rule"

# Study run metrics. Curves are logged with step = rank, so the MLflow UI draws them.
REFERENCE_SCORE = "reference_score"  # the planted deltas' top-k reference curve
BASE_PREFIX = "base_"  # + metric: the base model's test score; base_score for the primary one
WALL_SECONDS = "wall_seconds"
SHARED_SETUP_SECONDS = "shared_setup_seconds"

# Trial and method run metrics: "<split>_<metric>[_<rule>]" curves, split "val" or "test".
VAL, TEST = "val", "test"
SCORE = "score"  # the primary metric, as a curve's metric
TRAIN_LOSS = "train_loss"  # step = optimizer step
TEST_SCORE = f"{TEST}_{SCORE}"  # the primary metric's test curve
SEED_CURVE_PREFIX = f"{TEST_SCORE}_seed"  # + seed: one seed's test curve (method runs)
SELECTION_METRIC = "selection_metric"  # what the search compared, under the trial's own rule
SELECTION_RULE_PREFIX = f"{SELECTION_METRIC}_"  # + rule: what it compared under each rule
AURAC_PREFIX = "aurac_"  # + log2, linear (and their _std on method runs)
COST_PREFIX = "cost_"  # + a cost field: device_seconds, flops, train_tokens, ...
TRIALS = "trials"  # a method run's number of trials
ENDS = ("low", "high")  # an interval's ends: aurac_log2_low, test_score_high, ...

# Tags of the verdict (rankstudy.core.verdict): on a method run, its AURAC log2 interval, its gap to
# the best method and its own deploy rank; on the study run, what to deploy and the one-seed
# note, beside the whole verdict as VERDICT_ARTIFACT.
INTERVAL_TAG = "rankstudy.interval"  # "0.812 [0.801, 0.823] (95%)"
VS_BEST_TAG = "rankstudy.vs_best"  # "-0.004 [-0.010, +0.002] vs lora_grid, not separated"
DEPLOY_RANK_TAG = "rankstudy.deploy_rank"  # the smallest rank tied with the method's best
RECOMMENDATION_TAG = "rankstudy.recommendation"  # "<method> at rank <k>"
INTERVALS_NOTE_TAG = "rankstudy.intervals_note"  # only with one seed
# + a method the spec asks for that the study did not score, on the study run: why, as the
# study's summary says it (`missing`); the report reads it (studies logged before: worked out)
MISSING_TAG_PREFIX = "rankstudy.missing."

# Artifacts.
SPEC_ARTIFACT = "spec.json"  # the resolved spec, on the study run
SUMMARY_ARTIFACT = "study_summary.json"
CURVE_ARTIFACT = "curve.json"  # a method's curve as a table
VERDICT_ARTIFACT = "verdict.json"  # the study summary's "verdict", on the study run


def base_metric(metric: str) -> str:
    """The study run's metric for the base model's score in `metric` ("score": the primary)."""
    return f"{BASE_PREFIX}{metric}"


def curve_metric(split: str, metric: str, rule: str | None = None, own: str | None = None) -> str:
    """A curve's name: the rule is named only when it is not `own`, the run's own rule."""
    return f"{split}_{metric}" + ("" if rule is None or rule == own else f"_{rule}")


def interval_metric(metric: str, end: str) -> str:
    """One end ("low" or "high") of a method run metric's interval: aurac_log2_low, ...; a
    curve's (test_score_low) has step = rank like the curve."""
    return f"{metric}_{end}"


def method_run_key(method: str) -> str:
    """The TRIAL_KEY_TAG of a method's summary run."""
    return f"method/{method}"


def seed_curve(seed: object) -> str:
    return f"{SEED_CURVE_PREFIX}{seed}"


def validation_at_rank(rank: object) -> str:
    """The validation score at one rank over training (step = optimizer step)."""
    return f"{VAL}_{SCORE}_r{rank}"
