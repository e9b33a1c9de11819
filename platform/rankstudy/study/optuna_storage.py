"""Where a study's Optuna searches are kept: one sqlite storage in the study's folder
(optuna.db), one Optuna study per arm named <study>/<arm>/seed<search seed>, so that
optuna-dashboard opens them by name and --resume continues them.

The searcher (rankstudy.study.search.ArmSearch) runs on the driver, and only it writes the storage:
on a cluster too, the study folder on the driver's disk is the right place (no trial reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

if TYPE_CHECKING:  # the report reads the names here without importing Ray
    from ray.tune.search.optuna import OptunaSearch

STORAGE_FILE = "optuna.db"
ARM_ATTR = "arm"  # the study's user attributes: which arm, of which study, at which seed
STUDY_ATTR = "rankstudy_study"
SEED_ATTR = "search_seed"


def storage_url(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir) / STORAGE_FILE}"


def search_name(study: str, arm: str, seed: int) -> str:
    return f"{study}/{arm}/seed{seed}"


def fresh_search(
    storage: optuna.storages.BaseStorage | None,
    study: str,
    arm: str,
    seed: int,
    searcher: Callable[[str], OptunaSearch],
) -> OptunaSearch:
    """The arm's OptunaSearch, which `searcher` makes from the Optuna study's name, on a fresh
    study labelled with its arm, study and seed (storage None: in memory). A stored study of
    that name is deleted first: a searcher opens its studies once, at its first suggestion, so
    what one holds came from a run that no saved searcher knows (a resume whose Tuner could
    not be restored starts its search again)."""
    name = search_name(study, arm, seed)
    if storage is None:
        return searcher(name)
    if name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)
    made = searcher(name)  # creates the study
    labelled = optuna.load_study(study_name=name, storage=storage)
    for key, value in {ARM_ATTR: arm, STUDY_ATTR: study, SEED_ATTR: seed}.items():
        labelled.set_user_attr(key, value)
    return made


def fail_lost(searcher: OptunaSearch) -> None:
    """Mark FAIL the trials a restored searcher asked for after Tune last saved it: they stay
    RUNNING in the storage, but no searcher holds them, so none will ever tell them (TPE leaves
    failed trials out as it does running ones, so the search goes on as it would have)."""
    study = searcher._ot_study  # Ray keeps the study and its asked trials private
    held = {t.number for t in searcher._ot_trials.values()}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number not in held:
            study.tell(t.number, state=TrialState.FAIL)
