"""The records that cross a process or outlive one, each defined once: the trial config (what a
trial is asked to do), the trial result (its result.json) and the study's record of an ended
trial (an entry of study_state.json).

Torch-free, so the driver, the plan and the report read them without a trial's dependencies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rankstudy.core.spec import StudySpec, parse_spec
from rankstudy.core.trial_request import Selection

RESULT_FILE = "result.json"
# Bump when a field changes meaning or goes; readers refuse other versions. 2 added each
# example's score (`examples`); a version-1 result reads as one without them. 3 added the
# status "stopped" (a search trial its scheduler stopped early); older ones read as "ok".
RESULT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

# What a trial evaluates at its end by default: the study's search trials stop at validation,
# and only each arm's chosen trial is scored on test, by running it again with ["test"].
SPLITS = ("validation", "test")

Curve = dict[int, float]  # rank -> score
ByRule = dict[str, Curve]  # inference rule -> curve
# split -> metric -> rule -> rank -> each example's score, in the split's order
ExampleScores = dict[str, dict[str, dict[str, dict[int, list[float]]]]]
EXAMPLE_DIGITS = 6  # kept per example: far below any bootstrap interval's width


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")  # as json writes them


class TrialConfig(_Record):
    """One trial: an arm of a resolved spec (the study's, with the trial's overrides applied
    once, where the trial was asked for). Paths are named as the study names them; each
    process maps them to its own copy (rankstudy.storage.folders). Ray carries it pickled,
    so no process parses the spec again."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spec: StudySpec
    arm: str
    out_dir: str
    overrides: list[str] = []  # what the spec was resolved with (result.json keeps them)
    splits: list[str] = list(SPLITS)
    cache_dir: str | None = None  # set-up shared by a study's trials (planted calibration)
    storage: str | None = None  # the study's storage URI (None: its folder is the storage)
    study_dir: str | None = None
    score_base: bool = False  # also score the base model on test (one test pass a study)

    @classmethod
    def of(cls, config: TrialConfig | dict) -> TrialConfig:
        """A TrialConfig, or one from the dict a test or a script writes: the spec file's
        data and its overrides, resolved here."""
        if isinstance(config, TrialConfig):
            return config
        fields = dict(config)
        fields["spec"] = parse_spec(fields["spec"], fields.get("overrides", []))
        return cls.model_validate(fields)


class Hparams(_Record):
    lr: float
    weight_decay: float
    overrides: list[str]


class ValidationPoint(_Record):
    step: int
    scores: Curve


class RuleCost(_Record):
    """What scoring under one inference rule spent (validation and test together)."""

    seconds: float
    tokens: int
    flops: float


class TrialCost(_Record):
    train_seconds: float
    eval_seconds: float
    wall_seconds: float
    shared_setup_seconds: float  # one-off set-up later trials reuse (in no method's cost)
    device_seconds: float  # (wall - shared set-up) x devices
    devices: int
    device_type: Literal["cpu", "gpu"]
    train_tokens: int
    eval_tokens: int
    flops: float
    train_flops: float  # of it: training (throughput is measured on it)
    peak_memory_bytes: int
    eval_by_rule: dict[str, RuleCost] = {}  # of eval_*: each rule's share (empty: version 1)


class TrialResult(_Record):
    """result.json: one trial's scores and cost. A validation-only run (a search trial) has
    empty test fields (scores, scores_by_rule, extra_scores, aurac). A trial the search's
    scheduler stopped early is "stopped": its steps, validation and cost are those of the
    validation it was stopped at."""

    version: int = RESULT_VERSION
    status: Literal["ok", "stopped"] = "ok"
    arm: str
    method: str
    max_rank: int
    train_ranks: list[int]
    seed: int
    hparams: Hparams
    inference_rule: str  # the rule `scores` are served with
    metric: str  # what `scores` measure
    scores: Curve
    validation_scores: Curve
    scores_by_rule: ByRule
    validation_scores_by_rule: ByRule
    extra_scores: dict[str, ByRule]  # metric -> rule -> curve, beside the primary metric
    validation_extra_scores: dict[str, ByRule]
    selection_metric: float
    selection_metric_by_rule: dict[str, float]
    aurac: dict[str, float]  # "log2", "linear" of the test curve
    loss_curve: list[float]
    validation_curve: list[ValidationPoint]
    steps: int
    resumed_from: list[int]
    cost: TrialCost
    reference: Curve | None = None  # the planted task's top-k reference curve
    base_scores: dict[str, float] | None = None  # the base model on test, metric -> score
    examples: ExampleScores = {}  # every scored example (empty in a version-1 result)

    def wire(self) -> dict:
        """The JSON object result.json holds."""
        return self.model_dump(mode="json", exclude_none=True)

    def selection(self) -> Selection:
        """What the search compares it by."""
        return Selection(metric=self.selection_metric, by_rule=self.selection_metric_by_rule)


class ResultError(ValueError):
    """A result.json that cannot be used: cut short, corrupt, or of another version."""


def write_json(path: Path, data: Any) -> Path:
    """A record's JSON file, atomically (a temporary file renamed over it): a reader never
    finds it cut short, and a kill never leaves half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.tmp")
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(path)
    return path


def write_result(result: TrialResult, out_dir: str | Path) -> Path:
    """result.json in out_dir."""
    return write_json(Path(out_dir) / RESULT_FILE, result.wire())


def read_result(
    path: str | Path, read_text: Callable[[str | Path], str] = lambda p: Path(p).read_text()
) -> TrialResult:
    """A trial's result.json; read_text fetches it (a study's storage, for one on another
    node). Raises ResultError for one that is damaged or of another version."""
    try:
        raw = json.loads(read_text(path))
    except ValueError as e:  # trials write it atomically: damaged from outside the trial
        raise ResultError(f"{path} cannot be read (cut short or corrupt: {e})") from None
    version = raw.get("version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise ResultError(
            f"{path} is a result of version {version} (none: written before versions); this "
            f"rankstudy reads versions {list(READABLE_VERSIONS)}: run the trial again"
        )
    try:
        return TrialResult.model_validate(raw)
    except ValidationError as e:
        raise ResultError(f"{path} is not a trial result: {e}") from None


FAILURE_FILE = "failure.json"
FAILURE_VERSION = 1
OLD_FAILURE_FILE = "failure.txt"  # its reason alone, by trials of studies saved before


class TrialFailure(_Record):
    """failure.json, in place of result.json: a trial that failed in a way no retry can fix
    (rankstudy.trial.failures), and why. Written by the trial's Tune function or by
    `rankstudy trial`; the study keeps the reason in its record and MLflow."""

    version: int = FAILURE_VERSION
    arm: str
    reason: str

    def wire(self) -> dict:
        return self.model_dump(mode="json")


def write_failure(failure: TrialFailure, out_dir: str | Path) -> Path:
    """failure.json in out_dir."""
    return write_json(Path(out_dir) / FAILURE_FILE, failure.wire())


def read_failure(
    out_dir: str | Path,
    arm: str,
    read_text: Callable[[str | Path], str] = lambda p: Path(p).read_text(),
) -> TrialFailure:
    """A failed trial's failure.json (read_text fetches it, as for read_result); a trial of a
    study saved before wrote failure.txt, its reason alone."""
    try:
        text = read_text(Path(out_dir) / FAILURE_FILE)
    except FileNotFoundError:
        return TrialFailure(arm=arm, reason=read_text(Path(out_dir) / OLD_FAILURE_FILE))
    try:
        raw = json.loads(text)
        if raw.get("version") != FAILURE_VERSION:
            raise ValueError(f"version {raw.get('version')!r}, this rankstudy reads 1")
        return TrialFailure.model_validate(raw)
    except (ValueError, AttributeError) as e:
        raise ResultError(f"{Path(out_dir) / FAILURE_FILE} cannot be read ({e})") from None


class TrialRecord(_Record):
    """A search trial or test pass as the study keeps it (study_state.json) and logs it to
    MLflow once (`logged`). A test pass adds the rules it was chosen for and its seed."""

    key: str  # <arm>/<trial folder>
    arm: str
    method: str
    rank: str  # "4" for LoRA at rank 4, "1-8" for a nested method
    trial: int | None  # its number within the arm
    out_dir: str
    params: dict[str, Any]  # sampled hyperparameters by spec path
    status: Literal["ok", "failed", "stopped"]  # stopped: early, by the search's scheduler
    failure: str | None
    selection_metric: float | None  # None: it failed, nothing to select it by
    selection_by_rule: dict[str, float] = {}
    stopped_at: int | None = None  # the step the search's scheduler stopped it at
    node: str | None = None
    logged: bool = False
    superseded: bool = False  # a rerun after a resume replaced it (rankstudy.study.tuner)
    rules: list[str] | None = None
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _failed_selects_nothing(cls, data: Any) -> Any:
        """A state saved before held -1.0, what the searcher is told, as a failed trial's."""
        if isinstance(data, dict) and data.get("status") == "failed":
            data = data | {"selection_metric": None}
        return data

    @property
    def is_test(self) -> bool:
        return self.rules is not None

    def selection(self) -> Selection | None:
        """What the search compared it by (None: it failed)."""
        if self.selection_metric is None:
            return None
        return Selection(metric=self.selection_metric, by_rule=self.selection_by_rule)
