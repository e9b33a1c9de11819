"""A study's Tune search: one Tuner for every arm's trials and test passes (the searcher is
rankstudy.study.search.ArmSearch), restored after a kill, and the records of the trials it ends.

Each Tune trial is a function that trains one arm with one set of hyperparameters
(rankstudy.trial.trainable): in its own (reused) actor when the spec asks for one worker, or as a
Ray Train TorchTrainer over several. Crashed trials are retried from their last checkpoint
(FailureConfig); a study killed mid-way continues with --resume, rerunning nothing that ended.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from rankstudy.core.arms import parse_arm
from rankstudy.core.records import TrialRecord
from rankstudy.core.spec import StudySpec
from rankstudy.core.trial_request import StudyRef, TrialReport, TrialRequest
from rankstudy.storage.disk import DiskWatch
from rankstudy.storage.folders import TrialStorage
from rankstudy.study.recorder import MlflowRecorder
from rankstudy.study.state import StudyFiles
from rankstudy.study.waiting import WaitWatch
from rankstudy.trial.trainable import trial_bundles, trial_resources, tune_trial

# (the trial, why it failed or None): what the study does as a trial ends
TrialEnded = Callable[["EndedTrial", "str | None"], None]


class TrialEvents(tune.Callback):
    """Hands each ended trial to the study as it ends, watches trials waiting for resources
    (stopping the study as Ctrl-C does once they gave up), and watches the disks the study
    writes (stopping it once one is full, the trial it cut off left for --resume to rerun).

    Tune pickles its callbacks into the Tuner's state and a restored Tuner unpickles them: this
    one pickles detached (the live study holds threads and locks) and unpickles as the running
    study's own (the one this process made last, before it restored the Tuner), so a resumed
    study records into itself."""

    running: ClassVar[TrialEvents | None] = None

    def __init__(self, ended: TrialEnded, waiting: WaitWatch, disk: DiskWatch) -> None:
        self.ended = ended
        self.waiting = waiting
        self.disk = disk
        TrialEvents.running = self

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        if TrialEvents.running is not None:  # else detached: only read, never run
            self.__dict__.update(TrialEvents.running.__dict__)

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.disk.poll()
        if not self.waiting.gave_up:
            self.waiting.step(trials)
            if self.waiting.gave_up:  # Tune's own stop on Ctrl-C: resumable, every trial kept
                os.kill(os.getpid(), signal.SIGINT)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._record(trial, None)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.disk.check(_last_error(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self.disk.check(_last_error(trial)):
            return  # not a failed trial: Tune keeps it errored, and --resume reruns it
        why = f"trial {trial.trial_id} crashed {trial.num_failures} times; see {trial.path}"
        self._record(trial, why)

    def _record(self, trial, why: str | None) -> None:
        try:
            self.ended(ended_trial(trial.config, trial.last_result or {}), why)
        except OSError as e:  # the state file could not be written: Tune's state keeps it
            if not self.disk.check(e):
                raise


def _last_error(trial) -> str | None:
    """The text of a trial's latest failure, as Tune keeps it on the driver."""
    path = trial.error_file
    if path is None or not Path(path).is_file():
        return None
    return Path(path).read_text(errors="replace").rsplit("Failure # ", 1)[-1]


def open_tuner(
    spec: StudySpec,
    param_space: dict,
    searcher: Searcher,
    samples: int,
    storage: TrialStorage,
    events: TrialEvents,
    resume: bool,
    scheduler: TrialScheduler | None = None,
) -> tune.Tuner:
    """The study's Tuner: restored, when resuming one that Tune saved, with `events`
    attached in place of the detached copy Tune unpickled; else a new one. scheduler: the
    search's (rankstudy.study.arm_scheduler), or None for Tune's default (every trial runs to its
    end); a restored Tuner keeps the one it was made with."""
    trainable = tune.with_resources(tune_trial, trial_resources(spec))
    root, filesystem = storage.tune_location()
    path = f"{root}/search"
    # Tune keeps one trial pending at a time behind a custom searcher, so the second slot's
    # actor would start only once the first is up; let every slot's actor start at once.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(slots(spec)))
    # MLflow holds every metric; of Tune's own loggers only the JSON one is kept, which its
    # end-of-search analysis reads. Its CSV copy and TensorBoard files are not written (the
    # TensorBoard writer alone imported torch into the driver: seconds of CPU per study).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if resume and tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        # its callbacks unpickle as `events` (TrialEvents.__setstate__)
        return tune.Tuner.restore(
            path, trainable, resume_errored=True, storage_filesystem=filesystem
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=samples,
            reuse_actors=True,
            max_concurrent_trials=max_concurrent(spec),
        ),
        run_config=tune.RunConfig(
            name="search",
            storage_path=root,
            storage_filesystem=filesystem,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
            callbacks=[events, JsonLoggerCallback()],
        ),
    )


def slots(spec: StudySpec) -> int:
    """How many trials the cluster holds at once now."""
    import ray

    kind = "GPU" if spec.resources.use_gpu else "CPU"
    per_trial = sum(b.get(kind, 0) for b in trial_bundles(spec))
    return max(1, int(ray.cluster_resources().get(kind, 0)) // per_trial)


def max_concurrent(spec: StudySpec) -> int | None:
    """Multi-worker trials: as many as the cluster holds at once, each driver with its
    workers. One-worker trials: Tune packs them by their resources."""
    return slots(spec) if spec.resources.workers > 1 else None


@dataclass(frozen=True)
class EndedTrial:
    """A trial Tune ended, as the study reads it: what was asked, what it last reported (None:
    nothing), its folder, its key and its entry in the study's book."""

    request: TrialRequest
    report: TrialReport | None
    folder: Path
    key: str
    entry: str


def ended_trial(config: dict, metrics: dict) -> EndedTrial:
    """A trial from Tune's config and last result (`trial_id` names a search trial's folder
    when it never reported one)."""
    request, report = TrialRequest.of_tune(config), TrialReport.of_tune(metrics)
    study_dir = StudyRef.of_tune(config).study_dir
    if report is not None:
        folder = Path(report.out_dir)
    else:
        folder = request.folder(study_dir, metrics.get("trial_id", "unreported"))
    return EndedTrial(request, report, folder, *request.keys(folder))


def new_record(spec: StudySpec, ended: EndedTrial, failure: str | None) -> TrialRecord:
    """An ended trial as the study keeps it."""
    request, report = ended.request, ended.report
    shape = parse_arm(request.arm, spec)
    stopped = report is not None and report.interim  # ended at a validation: the scheduler's
    selection = None if report is None else report.selection
    return TrialRecord(
        key=ended.key,
        arm=request.arm,
        method=shape.method,
        rank=f"1-{shape.max_rank}" if shape.nested else str(shape.max_rank),
        trial=request.trial,
        out_dir=str(ended.folder),
        params=request.params,
        status="failed" if failure else "stopped" if stopped else "ok",
        failure=failure,
        selection_metric=None if selection is None else selection.metric,
        selection_by_rule={} if selection is None else selection.by_rule,
        stopped_at=report.step if stopped and not failure else None,
        node=None if report is None else report.node,
        rules=request.rules,
        seed=request.seed,
    )


def drop_superseded(
    files: StudyFiles, recorder: MlflowRecorder, kept: set[str], log: Callable[[str], None]
) -> None:
    """A kill can land after a trial ended (and was recorded) but before Tune saved that;
    the resumed Tuner then runs the same suggestion again under a new id. The earlier copy
    leaves the search (selection and trial counts) and MLflow; its compute stays in the
    method's cost, since it was spent."""
    for key, record in files.state.trials.items():
        if key not in kept and not record.superseded:
            with files.lock:
                record.superseded = True
            recorder.drop_trial(key)
            log(f"{key}: superseded by its rerun after the resume")
    files.save()
