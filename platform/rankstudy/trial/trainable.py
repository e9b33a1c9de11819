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
from rankstudy.core.records import TrialConfig, TrialResult
from rankstudy.core.spec import StudySpec, parse_spec
from rankstudy.core.tune_keys import FAILED_METRIC, as_overrides, reported, sampled
from rankstudy.storage.folders import trial_storage

# A report made at a validation mid-training (what an ASHA search compares) carries these: it
# is not the trial's end, and STEP, its optimizer step, is the scheduler's time attribute.
INTERIM, STEP = "interim", "step"


def execute(
    config: TrialConfig, storage: str, validated: Callable[[int, dict], None] | None = None
) -> TrialResult:
    """Run one trial config where it is: this process for one worker, Ray Train for more
    (validated: as Trial.train takes it; one worker only, rankstudy.core.spec says why)."""
    from rankstudy.trial.lifecycle import run_trial

    if parse_spec(config.spec, config.overrides).resources.workers == 1:
        result = run_trial(config.wire(), validated)
    else:
        from rankstudy.trial.ray_train import fit_trial

        result = fit_trial(config, storage, Path(config.out_dir).name)
    return TrialResult.model_validate(result)


def trial_config(config: dict, storage: str | None) -> TrialConfig:
    """What a Tune config asks of its trial. phase "search": train one arm with the sampled
    hyperparameters and validate. phase "test": score a chosen trial on test (resuming at its
    final checkpoint), or train and score it again at another seed."""
    study_dir = Path(config["study_dir"])
    overrides = [*config["overrides"], *as_overrides(sampled(config))]
    if config["phase"] == "search":
        out_dir = study_dir / "trials" / config["arm"] / tune.get_context().get_trial_id()
        splits = ["validation"]
    elif config["first_seed"]:
        out_dir, splits = Path(config["test_of"]), ["test"]
    else:
        out_dir = Path(f"{config['test_of']}-seed{config['seed']}")
        overrides.append(f"seed={config['seed']}")
        splits = ["validation", "test"]
    return TrialConfig(  # paths as the study names them; each process maps them to its copy
        spec=config["spec"],
        arm=config["arm"],
        out_dir=str(out_dir),
        overrides=overrides,
        splits=splits,
        cache_dir=str(study_dir / "cache"),
        storage=storage,
        study_dir=str(study_dir),
        # the base model's test score, once a study: with the first arm's chosen trial
        score_base=config["phase"] == "test"
        and config["first_seed"]
        and config["arm"] == study_arms(parse_spec(config["spec"], config["overrides"]))[0],
    )


def tune_trial(config: dict) -> None:
    """The Tune trainable: run the trial its config asks for (trial_config) and report. A
    failure a retry can fix is raised, for Tune to retry from the checkpoint, and so is a full
    disk (rankstudy.storage.disk); any other is reported once, its reason in the trial folder's
    failure.txt (rankstudy.trial.failures). A search trial under a scheduler (search.scheduler) also
    reports each validation as it trains; when the scheduler stops the trial, Tune ends that
    report with SystemExit in this thread, which unwinds the trial (its engine closed) and
    leaves the record it wrote for that validation (Trial.stopped_here)."""
    import traceback

    from rankstudy.storage.disk import disk_full, full_disk_error, short_of_space
    from rankstudy.trial.failures import failure_reason, retry_can_fix

    storage = trial_storage(config)
    trial = trial_config(config, storage.uri)
    # the trial's hyperparameters, and the node it ran on (a multi-worker trial's workers may
    # be elsewhere), go into every report: the study records both
    report = reported(sampled(config)) | {"node": ray.get_runtime_context().get_node_id()}

    def outcome(selection: dict[str, float]) -> dict:
        return {"failed": False, "out_dir": trial.out_dir, **report, **selection}

    def validated(step: int, selection: dict[str, float]) -> None:
        tune.report(outcome(selection) | {INTERIM: True, STEP: step})

    scheduled = (
        config["phase"] == "search"
        and parse_spec(config["spec"], config["overrides"]).search.scheduler is not None
    )
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
        local.mkdir(parents=True, exist_ok=True)
        (local / "failure.txt").write_text(failure_reason(e))
        storage.push(local / "failure.txt")
        tune.report(
            {"selection_metric": FAILED_METRIC, "failed": True, "out_dir": trial.out_dir, **report}
        )
        return
    tune.report(outcome(result.selection()))


def trial_resources(spec: StudySpec) -> dict:
    r = spec.resources
    # more workers: this function drives a TorchTrainer, whose workers hold the devices; Ray
    # gets logical CPUs = cores + concurrent trials for it (ray_cluster.connect_ray)
    return {"CPU": 1} if r.workers > 1 else r.worker


def trial_bundles(spec: StudySpec) -> list[dict]:
    """What one trial holds at once: its Tune function's resources, and each worker's."""
    r = spec.resources
    return [trial_resources(spec)] + ([r.worker] * r.workers if r.workers > 1 else [])
