"""Each arm's Optuna search, drawn from the study's Optuna storage (the optuna.db its parent
run holds, rankstudy.study.optuna_storage) with optuna.visualization.matplotlib: the search history,
the objective against each parameter, parameter importance where the arm has enough trials
for it to say something, and every arm's trials on one parallel-coordinates plot."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization.matplotlib as views
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from rankstudy.core.tune_keys import FAILED_METRIC
from rankstudy.study.optuna_storage import ARM_ATTR, STORAGE_FILE
from rankstudy_report.charts import STYLE, log_ticks, svg

# Importance is fANOVA's split of the objective's variance over the parameters: with one
# parameter there is nothing to split, and a forest fitted to fewer points than this says more
# about where the sampler went than about the parameters.
IMPORTANCE_MIN_TRIALS = 5
TARGET = "validation (selection metric)"


@dataclass
class ArmSearchView:
    """An arm's Optuna study as the report shows it."""

    arm: str
    study: str  # the Optuna study's name
    trials: int
    complete: int
    params: list[str]
    figures: dict[str, str] = field(default_factory=dict)  # history, slice, importance: SVG
    note: str | None = None  # why a view is not drawn, a sentence


def importance_note(complete: int, params: int) -> str | None:
    """Why an arm gets no importance chart; None when it gets one."""
    if params < 2:
        return "No parameter importance: one parameter searched, nothing to weigh it against."
    if complete < IMPORTANCE_MIN_TRIALS:
        return (
            f"Not enough trials for parameter importance: {complete} complete, it needs "
            f"{IMPORTANCE_MIN_TRIALS}."
        )
    return None


def figure_of(axes) -> str:
    """A plot's SVG, from the Axes (or grid of Axes) Optuna returns."""
    return svg(np.ravel(axes)[0].figure)


def log_ticked(axes):
    """Optuna's slice plot with log_ticks on its log axes: its own crowd a span under a decade."""
    for ax in np.ravel(axes):
        if ax.get_xscale() == "log":
            log_ticks(ax, count=3)  # a panel each: narrow
            ax.tick_params(axis="x", labelrotation=30)
    return axes


def arm_of(study: optuna.Study) -> str:
    """The arm an Optuna study searched (its name, for a storage that lacks the attribute)."""
    return study.user_attrs.get(ARM_ATTR, study.study_name)


def arm_view(study: optuna.Study) -> ArmSearchView:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    params = sorted({p for t in complete for p in t.params})
    view = ArmSearchView(
        arm_of(study),
        study.study_name,
        len(trials),
        len(complete),
        params,
    )
    if not complete:
        view.note = "No trial completed: nothing to draw."
        return view
    view.note = importance_note(len(complete), len(params))
    with plt.rc_context(STYLE), warnings.catch_warnings():  # Optuna sets its own style
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        view.figures["history"] = figure_of(
            views.plot_optimization_history(study, target_name=TARGET)
        )
        view.figures["slice"] = figure_of(log_ticked(views.plot_slice(study, target_name=TARGET)))
        if view.note is None:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # the same page
            view.figures["importance"] = figure_of(
                views.plot_param_importances(study, evaluator=evaluator, target_name=TARGET)
            )
    return view


def across_arms(studies: list[optuna.Study]) -> str | None:
    """Every arm's complete trials on one parallel-coordinates plot, the arm an axis of it:
    Optuna's own plot, of an in-memory study holding each trial with its arm as a parameter.
    None with fewer than two arms that completed a trial. A failed trial (told as -1) is left
    out: it would stretch the objective's colour scale over a value no trial scored."""
    arms = {
        arm_of(study): [
            t
            for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
            if t.value != FAILED_METRIC
        ]
        for study in studies
    }
    arms = {arm: trials for arm, trials in sorted(arms.items()) if trials}
    if len(arms) < 2:
        return None
    merged = optuna.create_study(direction="maximize")
    by_arm = optuna.distributions.CategoricalDistribution(list(arms))
    for arm, trials in arms.items():
        for t in trials:
            merged.add_trial(
                optuna.trial.create_trial(
                    params={"arm": arm, **t.params},
                    distributions={"arm": by_arm, **t.distributions},
                    value=t.value,
                )
            )
    with plt.rc_context(STYLE), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return figure_of(views.plot_parallel_coordinate(merged, target_name=TARGET))


def collect_searches(
    client: MlflowClient, run_id: str
) -> tuple[dict[str, ArmSearchView], str | None]:
    """(arm -> its Optuna search, the parallel coordinates across arms), from the storage the
    study logged; none for a study that searched nothing (an empty space) or was logged
    before studies kept one."""
    if STORAGE_FILE not in {a.path for a in client.list_artifacts(run_id)}:
        return {}, None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, STORAGE_FILE, tmp)
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
        try:
            studies = [
                optuna.load_study(study_name=name, storage=storage)
                for name in optuna.get_all_study_names(storage)
            ]
            found = [arm_view(study) for study in studies]
            across = across_arms(studies)
        finally:
            storage.engine.dispose()
    return {v.arm: v for v in sorted(found, key=lambda v: v.arm)}, across
