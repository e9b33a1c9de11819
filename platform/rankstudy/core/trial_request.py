"""What a study asks of one Tune trial, and what the trial reports back: the Tune encoding of
both, written and read here alone.

A request is a search trial (an arm, with the hyperparameters its Optuna search sampled) or a
test pass (an arm's chosen trial scored on test at one seed). Tune carries it as the flat
config the searcher suggests, beside the study's own keys (StudyRef: the spec file's data, its
overrides, the study folder, the storage); a trial's reports are flat dicts too. The keys are
those studies have always been saved with, so a study saved by an earlier rankstudy resumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from rankstudy.core.tune_keys import (
    FAILED_METRIC,
    REPORTED,
    as_overrides,
    reported,
    sampled,
    tune_key,
)

SELECTION = "selection_metric"  # the metric the searcher and the scheduler compare
SELECTION_PREFIX = "selection_"  # + rule: the selection metric under each rule
# A report made at a validation mid-training (what an ASHA search compares) carries INTERIM: it
# is not the trial's end, and STEP, its optimizer step, is the scheduler's time attribute.
INTERIM, STEP = "interim", "step"


def selection_keys(selection: float, by_rule: Mapping[str, float]) -> dict[str, float]:
    """A selection as Tune carries it: selection_metric, and selection_<rule> for each rule."""
    return {SELECTION: selection, **{f"{SELECTION_PREFIX}{r}": v for r, v in by_rule.items()}}


def selection_by_rule(keys: Mapping[str, Any]) -> dict[str, float]:
    """rule -> selection, read back from Tune's keys (selection_<rule>)."""
    return {
        k.removeprefix(SELECTION_PREFIX): v
        for k, v in keys.items()
        if k.startswith(SELECTION_PREFIX) and k != SELECTION
    }


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyRef(_Frozen):
    """The study every trial of a Tuner belongs to: the Tuner's param_space."""

    spec: dict[str, Any]  # the spec file as read
    overrides: list[str]  # the study's own (--set, and its inference rules)
    study_dir: str
    storage: str | None = None

    def tune(self) -> dict:
        return self.model_dump()

    @classmethod
    def of_tune(cls, config: Mapping[str, Any]) -> StudyRef:
        return cls(
            spec=config["spec"],
            overrides=config["overrides"],
            study_dir=config["study_dir"],
            storage=config.get("storage"),
        )


class TrialRequest(_Frozen):
    """One trial the study's searcher asks for."""

    arm: str
    phase: Literal["search", "test"]
    trial: int | None = None  # its number within the arm (a test pass: its chosen trial's)
    params: dict[str, Any] = {}  # sampled hyperparameters by spec path
    test_of: str | None = None  # a test pass: the folder of the trial it scores
    rules: list[str] | None = None  # a test pass: the inference rules it was chosen for
    seed: int | None = None  # a test pass: the seed it trains (or scored) at
    first_seed: bool = False  # a test pass at the study's first seed: resumes its trial

    @property
    def is_test(self) -> bool:
        return self.phase == "test"

    def tune(self) -> dict:
        """As the searcher suggests it to Tune."""
        out: dict[str, Any] = {"arm": self.arm, "phase": self.phase, "trial": self.trial}
        if self.is_test:
            out |= {"test_of": self.test_of, "rules": self.rules, "seed": self.seed}
            out |= {"first_seed": self.first_seed, **reported(self.params)}
        return out | {tune_key(path): v for path, v in self.params.items() if not self.is_test}

    @classmethod
    def of_tune(cls, config: Mapping[str, Any]) -> TrialRequest:
        """The request in a Tune config (the study's keys beside it are left out)."""
        test = config["phase"] == "test"
        return cls(
            arm=config["arm"],
            phase=config["phase"],
            trial=config.get("trial"),
            params=sampled({k: v for k, v in config.items() if k not in StudyRef.model_fields}),
            test_of=config["test_of"] if test else None,
            rules=config["rules"] if test else None,
            seed=config["seed"] if test else None,
            first_seed=config["first_seed"] if test else False,
        )

    def folder(self, study_dir: str | Path, trial_id: str) -> Path:
        """The trial's folder, as the study names it: a search trial's is named by its Tune
        id; a test pass at the first seed scores its trial in place; one at another seed trains
        again beside it."""
        if not self.is_test:
            return Path(study_dir) / "trials" / self.arm / trial_id
        return Path(self.test_of if self.first_seed else f"{self.test_of}-seed{self.seed}")

    def keys(self, folder: Path) -> tuple[str, str]:
        """(its key, its entry in the study's book): <arm>/<folder>, and a test pass's entry
        adds its seed."""
        key = f"{self.arm}/{folder.name}"
        return key, f"{key}/{self.seed}" if self.is_test else key

    def overrides(self) -> list[str]:
        """The spec overrides it adds to the study's: its hyperparameters, and a repeat's seed."""
        seed = [f"seed={self.seed}"] if self.is_test and not self.first_seed else []
        return [*as_overrides(self.params), *seed]

    def splits(self) -> list[str]:
        """Search: validation only; a test pass scores on test (a repeat validates too)."""
        if not self.is_test:
            return ["validation"]
        return ["test"] if self.first_seed else ["validation", "test"]


class Selection(_Frozen):
    """What the search compares a trial by, at its end or at a validation: the selection
    metric under the trial's own rule, and under each rule it was scored with."""

    metric: float
    by_rule: dict[str, float] = {}

    def tune(self) -> dict[str, float]:
        return selection_keys(self.metric, self.by_rule)

    @classmethod
    def of_tune(cls, keys: Mapping[str, Any]) -> Selection:
        return cls(metric=keys[SELECTION], by_rule=selection_by_rule(keys))


class TrialReport(_Frozen):
    """What a trial reports to Tune: where its folder is, its hyperparameters and node, and
    the selection of its end, or of a validation mid-training (interim, at step); a failed
    trial reports no selection."""

    out_dir: str
    params: dict[str, Any] = {}
    node: str | None = None
    failed: bool = False
    selection: Selection | None = None
    interim: bool = False
    step: int | None = None

    def with_selection(self, selection: Selection, step: int | None = None) -> TrialReport:
        """This report with a selection, made at a validation mid-training when step is
        given."""
        return self.model_copy(
            update={"selection": selection, "interim": step is not None, "step": step}
        )

    def tune(self) -> dict:
        """As Tune takes it. Tune insists on the searcher's metric in every result: a failed
        trial's is FAILED_METRIC, below any score, which the searcher is told (and never read
        back here: `failed` says it)."""
        out = {"out_dir": self.out_dir, "failed": self.failed, "node": self.node}
        out |= reported(self.params)
        out |= (self.selection or Selection(metric=FAILED_METRIC)).tune()
        return out | ({INTERIM: True, STEP: self.step} if self.interim else {})

    @classmethod
    def of_tune(cls, metrics: Mapping[str, Any]) -> TrialReport | None:
        """The report in a Tune result (None: the trial reported nothing, e.g. it errored)."""
        if "out_dir" not in metrics:
            return None
        failed = bool(metrics.get("failed"))
        return cls(
            out_dir=metrics["out_dir"],
            params=sampled({k: v for k, v in metrics.items() if k.startswith(REPORTED)}),
            node=metrics.get("node"),
            failed=failed,
            selection=None if failed else Selection.of_tune(metrics),
            interim=bool(metrics.get(INTERIM, False)),
            step=metrics.get(STEP),
        )
