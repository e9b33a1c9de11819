"""The Tune trainable: what runs in a study's (reused) trial actors.

Kept apart from rankstudy.study.driver so that an actor imports only what a trial needs (Tune, the
spec, the trial itself), not the driver's MLflow, figures and bookkeeping: every actor pays its
imports once, and on a small machine those seconds are a study's overhead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import ray
from ray import tune

from rankstudy.core.arms import study_arms
from rankstudy.core.records import TrialConfig, TrialFailure, TrialResult, write_failure
from rankstudy.core.spec import StudySpec, parse_spec_once
from rankstudy.core.trial_request import Selection, StudyRef, TrialReport, TrialRequest
from rankstudy.storage.folders import trial_storage


def execute(
    config: TrialConfig, storage: str, validated: Callable[[int, Selection], None] | None = None
) -> TrialResult:
    """Run one trial config where it is: this process for one worker, Ray Train for more
    (validated: as Trial.train takes it; one worker only, rankstudy.core.spec says why)."""
    from rankstudy.trial.lifecycle import run_trial

    if config.spec.resources.workers == 1:
        return run_trial(config, validated)
    from rankstudy.trial.ray_train import fit_trial

    return fit_trial(config, storage, Path(config.out_dir).name)


def trial_config(study: StudyRef, request: TrialRequest, trial_id: str) -> TrialConfig:
    """What a request asks of its trial. A search trial trains one arm with the sampled
    hyperparameters and validates; a test pass scores a chosen trial on test (resuming at its
    final checkpoint), or trains and scores it again at another seed."""
    overrides = [*study.overrides, *request.overrides()]
    first_arm = study_arms(parse_spec_once(study.spec, study.overrides))[0]
    return TrialConfig(  # paths as the study names them; each process maps them to its copy
        spec=parse_spec_once(study.spec, overrides),
        arm=request.arm,
        out_dir=str(request.folder(study.study_dir, trial_id)),
        overrides=overrides,
        splits=request.splits(),
        cache_dir=str(Path(study.study_dir) / "cache"),
        storage=study.storage,
        study_dir=study.study_dir,
        # the base model's test score, once a study: with the first arm's chosen trial
        score_base=request.is_test and request.first_seed and request.arm == first_arm,
    )


def tune_trial(config: dict) -> None:
    """The Tune trainable: run the trial its config asks for (trial_config) and report. A
    failure a retry can fix is raised, for Tune to retry from the checkpoint, and so is a full
    disk (rankstudy.storage.disk); any other is reported once, its reason in the trial folder's
    failure.json (rankstudy.trial.failures). A search trial under a scheduler (search.scheduler)
    also reports each validation as it trains; when the scheduler stops the trial, Tune ends
    that report with SystemExit in this thread, which unwinds the trial (its engine closed) and
    leaves the record it wrote for that validation (Trial.stopped_here)."""
    import traceback

    from rankstudy.storage.disk import disk_full, full_disk_error, short_of_space
    from rankstudy.trial.failures import failure_reason, retry_can_fix

    study, request = StudyRef.of_tune(config), TrialRequest.of_tune(config)
    trial = trial_config(study, request, tune.get_context().get_trial_id())
    storage = trial_storage(trial)
    # the trial's hyperparameters, and the node it ran on (a multi-worker trial's workers may
    # be elsewhere), go into every report: the study records both
    report = TrialReport(
        out_dir=trial.out_dir, params=request.params, node=ray.get_runtime_context().get_node_id()
    )

    def validated(step: int, selection: Selection) -> None:
        tune.report(report.with_selection(selection, step).tune())

    scheduled = not request.is_test and trial.spec.search.scheduler is not None
    # A stopped trial's thread unwinds (its engine closed, its memory freed) only once Tune
    # hands this actor its next trial, and Tune waits 2 s for that before it throws the actor
    # away and starts another (seconds of start-up and imports): let it finish.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "120")
    try:
        result = execute(trial, storage.path_of("ray"), validated if scheduled else None)
    except Exception as e:
        local = storage.local(trial.out_dir)
        if disk_full(e) or short_of_space([local]):  # the driver stops the study (resumable)
            raise full_disk_error(local, e) from e
        if retry_can_fix(e):
            raise
        traceback.print_exc()  # the whole traceback in the trial's log (the driver's too)
        storage.push(write_failure(TrialFailure(arm=trial.arm, reason=failure_reason(e)), local))
        tune.report(report.model_copy(update={"failed": True}).tune())
        return
    tune.report(report.with_selection(result.selection()).tune())


def trial_resources(spec: StudySpec) -> dict:
    r = spec.resources
    # more workers: this function drives a TorchTrainer, whose workers hold the devices; Ray
    # gets logical CPUs = cores + concurrent trials for it (ray_cluster.connect_ray)
    return {"CPU": 1} if r.workers > 1 else r.worker


def trial_bundles(spec: StudySpec) -> list[dict]:
    """What one trial holds at once: its Tune function's resources, and each worker's."""
    r = spec.resources
    return [trial_resources(spec)] + ([r.worker] * r.workers if r.workers > 1 else [])
