"""A study: every arm tuned with the same Optuna search under Ray Tune, the best trial of each
arm (chosen on validation) scored on test, repeated over seeds, summarised per method, and
recorded in MLflow.

`Study` composes its parts: the study's folder (rankstudy.study.state: state file, resume
checks, storage), the Tune search (rankstudy.study.tuner), the MLflow recorder
(rankstudy.study.recorder) and selection and summary (rankstudy.study.summary).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import IO

from mlflow.exceptions import MlflowException
from requests import RequestException

from rankstudy.core.arms import arm_rules, parse_arm, study_arms, study_rules
from rankstudy.core.records import TrialRecord
from rankstudy.core.spec import StudySpec, load_spec, read_spec_file
from rankstudy.core.summaries import SUMMARY_FILE, StudySummary
from rankstudy.core.trial_request import StudyRef, TrialReport
from rankstudy.storage.disk import DiskWatch, full_stop
from rankstudy.storage.folders import on_disk
from rankstudy.study.optuna_storage import STORAGE_FILE, storage_url
from rankstudy.study.preflight import preflight, tracking_uri
from rankstudy.study.progress import StudyProgress
from rankstudy.study.recorder import MlflowRecorder
from rankstudy.study.state import (
    LOCK_FILE,
    SpecRecord,
    StudyError,
    StudyFiles,
    StudyInterrupted,
    hold_folder,
)
from rankstudy.study.summary import (
    chosen_results,
    summarise,
    summary_table,
    test_passes,
    write_summary,
)
from rankstudy.study.tuner import (
    EndedTrial,
    TrialEvents,
    drop_superseded,
    ended_trial,
    new_record,
    open_tuner,
)
from rankstudy.study.waiting import WaitWatch, free_resources
from rankstudy.tracking.tracker import StudyTracker
from rankstudy.trial.trainable import trial_bundles

__all__ = ["Study", "StudyError", "StudyInterrupted", "summary_table"]


class Study:
    def __init__(
        self,
        spec_path: str,
        overrides: list[str],
        out_dir: str | None,
        resume: bool,
        tags: dict[str, str] | None = None,
        spec: StudySpec | None = None,
    ) -> None:
        """tags: the parent run's own (a sweep point's, rankstudy.study.sweep.SweepPoint.tags);
        spec: the caller's parse of spec_path with overrides, if it made one."""
        self.spec = spec or load_spec(spec_path, overrides)  # input errors before any compute
        self.out_dir = Path(out_dir or f"runs/{self.spec.name}").resolve()
        preflight(self.spec, self.out_dir)  # what `rankstudy plan` checks, the same way
        self.raw = read_spec_file(spec_path)
        self.spec_path = spec_path
        rules = json.dumps(study_rules(self.spec))
        self.overrides = [*overrides, f"adapters.inference_rules={rules}"]
        self.files = StudyFiles(self.spec, self.out_dir, resume)
        self.held: IO[str] | None = None  # the folder's lock, once held (hold)
        self.made_folder = False
        self.files.state.spec = SpecRecord(raw=self.raw, overrides=self.overrides)  # `export`
        self.seeds = self.spec.seeds or [self.spec.seed]
        self.resume = resume
        self.tags = tags or {}
        self.recorder: MlflowRecorder | None = None  # once MLflow answers (run)

    def hold(self) -> None:
        """Hold the study's folder for this driver until the process ends (hold_folder): the
        command holds every point's before it starts Ray, run() any not held yet."""
        if self.held is None:
            self.made_folder = not self.out_dir.exists()
            self.held = hold_folder(self.out_dir)

    def let_go(self) -> None:
        """A study refused before it ran: its folder is let go, and removed if it was made
        only to be held."""
        if self.held is None:
            return
        self.held.close()
        self.held = None
        if self.made_folder:
            (self.out_dir / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: something else wrote there
                self.out_dir.rmdir()

    def log(self, message: str) -> None:
        print(f"[study {self.spec.name}] {message}", flush=True)

    def attach(self, tracker: StudyTracker) -> MlflowRecorder:
        self.recorder = MlflowRecorder(self.files, tracker, self.log)
        return self.recorder

    def run(self) -> StudySummary:
        """Run (or resume) the study to its summary; a disk that fills up stops it with the
        folder and its free space named (rankstudy.storage.disk), resumable once space is freed."""
        self.hold()
        uri = tracking_uri(self.spec.tracking.uri, self.out_dir)
        self.disk = DiskWatch(self.written_folders(uri))
        try:
            return self._run(uri)
        except BaseException as e:
            why = self.disk.reason or (
                None if isinstance(e, KeyboardInterrupt) else self.disk.full(e)
            )
            if why is None:
                raise
            raise StudyError(full_stop(why, self.out_dir)) from e

    def written_folders(self, tracking: str) -> list[Path]:
        """The folders on this machine the driver writes: the study's, a storage on shared
        disk, a sqlite MLflow store's (tracking: the study's MLflow URI)."""
        folders = [self.out_dir]
        if (storage := on_disk(self.files.storage.uri)) is not None:
            folders.append(Path(storage))
        if tracking.startswith("sqlite:///"):
            folders.append(Path(tracking.removeprefix("sqlite:///")).parent)
        return folders

    def _run(self, uri: str) -> StudySummary:
        recorder = self.attach(StudyTracker(uri, self.spec.tracking.experiment or self.spec.name))
        parent = recorder.start(self.spec.name, self.spec.model_dump(mode="json"), self.tags)
        start = time.perf_counter()
        try:
            recorder.relog()
            self.search()
            recorder.flush()
            recorder.catch_up(self.out_dir)
            chosen, missing = chosen_results(self.spec, self.files, self.seeds)
        except BaseException as e:
            if not (self.disk.reason or self.disk.full(e)):  # a full disk takes no write
                with contextlib.suppress(Exception):  # MLflow may be what failed
                    recorder.tracker.client.set_terminated(parent, "KILLED")
            raise
        summary = summarise(
            self.spec,
            self.spec_path,
            self.files,
            chosen,
            missing,
            time.perf_counter() - start,
            self.log,
        )
        try:  # the summary file is written whatever MLflow does: it holds the study's outcome
            self.record_summary(summary)
            summary.report = self.report()
            summary.registered = self.register(summary)
        finally:
            write_summary(self.out_dir, summary)
        return summary

    def record_summary(self, summary: StudySummary) -> None:
        try:
            self.recorder.log_summary(
                summary, self.out_dir / "figures", self.out_dir / STORAGE_FILE
            )
        except (MlflowException, RequestException) as e:
            raise StudyError(
                f"tracking.uri: MLflow at {self.recorder.tracker.uri} failed while taking the "
                f"summary ({type(e).__name__}: {str(e)[:300]}); {self.out_dir / SUMMARY_FILE} "
                f"holds it; once the server answers, --resume --out {self.out_dir} writes it"
            ) from None

    def report(self) -> str | None:
        """Build the HTML report from what MLflow now holds, and log it to the parent run; a
        report that fails is said (everything is recorded: it can be built again later)."""
        from rankstudy_report import build_report

        state = self.files.state
        try:
            path = build_report(
                state.tracking_uri, self.out_dir / "report", run_id=state.parent_run_id
            )
        except Exception as e:
            self.log(
                f"report: not built ({type(e).__name__}: {e}); build it with rankstudy report "
                f"--run {state.parent_run_id} --tracking-uri {state.tracking_uri}"
            )
            return None
        self.log(f"report: {path}")
        return str(path)

    def register(self, summary: StudySummary) -> str | None:
        """With tracking.register_as: export the recommended method at its rank (first seed)
        to <out>/registered and register it (rankstudy.study.registry); its models:/ URI. One that
        fails is said with the command that registers it later, as a report is."""
        name = self.spec.tracking.register_as
        choice = summary.verdict.recommendation if summary.verdict else None
        if not name:
            return None
        # here, not above: exporting loads torch and transformers, which a study that
        # registers nothing (most) would import for nothing (seconds of its driver's CPU)
        from rankstudy.study.export import run_export
        from rankstudy.study.registry import Registration, figures, register

        if not choice:
            self.log("tracking.register_as: not registered: the study recommends no rank")
            return None
        method, rank = choice.method, choice.rank
        try:
            request = Registration(summary, figures(summary, method, rank, None), self.spec.model)
            folder = run_export(self.out_dir, method, [rank], self.out_dir / "registered")[0]
            uri = register(request, folder, name)
        except Exception as e:
            self.log(
                f"tracking.register_as: not registered ({type(e).__name__}: {e}); register it "
                f"with rankstudy export --study {self.out_dir} --method {method} --rank {rank} "
                f"--out {self.out_dir / 'registered'} --register {name}"
            )
            return None
        self.log(f"registered {method} at rank {rank}: {uri}")
        return uri

    def search(self) -> None:
        """Every arm's trials under one Tuner (under ASHA, per arm, when the spec asks);
        resumes the Tuner after a kill."""
        from rankstudy.study.arm_scheduler import ArmASHA
        from rankstudy.study.search import ArmSearch, upper_bound

        s = self.spec.search
        arms = study_arms(self.spec)
        rules = {arm: arm_rules(arm, self.spec) for arm in arms}
        weights = {arm: parse_arm(arm, self.spec).forwards_per_step for arm in arms}
        self.log(f"{len(arms)} arms x {s.trials_per_arm} trials: {', '.join(arms)}")
        self.progress = StudyProgress(len(arms) * s.trials_per_arm)
        needs = ", ".join(f"{b}" for b in trial_bundles(self.spec))
        timeout = self.spec.resources.wait_timeout_s
        waiting = WaitWatch(needs, timeout, self.log, every=min(30.0, timeout / 2))
        asha = s.scheduler and ArmASHA(arms, s.scheduler, self.spec.training.steps)
        study = StudyRef(
            spec=self.raw,
            overrides=self.overrides,
            study_dir=str(self.out_dir),
            storage=self.files.storage.uri,
        )
        tuner = open_tuner(
            self.spec,
            study.tune(),
            ArmSearch(
                rules,
                s.space,
                s.trials_per_arm,
                s.seed,
                self.seeds,
                weights,
                scheduler=asha,
                storage=storage_url(self.out_dir),
                study=self.spec.name,
            ),
            upper_bound(rules, s.trials_per_arm, len(self.seeds)),
            self.files.storage,
            TrialEvents(self.trial_ended, waiting, self.disk),
            self.resume,
            asha,
        )
        kept, unfinished = set(), 0
        for result in tuner.fit():  # trials that ended before a resume are recorded here
            if self.cut_off(result):
                unfinished += 1  # stopped by an interrupt: a resume runs it again
                continue
            error = (
                None if result.error is None else f"{type(result.error).__name__}: {result.error}"
            )
            kept.add(self.keep_ended(ended_trial(result.config, result.metrics or {}), error).key)
        drop_superseded(self.files, self.recorder, kept, self.log)
        self.check_ended(waiting, unfinished)

    def cut_off(self, result) -> bool:
        """Whether a trial Tune returns was stopped by an interrupt, not ended: it has no
        end report, or its last report is a validation (INTERIM) that the scheduler did not
        stop it at (the study records those as Tune stops them, trial_ended)."""
        if result.error is not None:
            return False
        report = TrialReport.of_tune(result.metrics or {})
        if report is None:  # never reported (Tune may not even hold its config): cut off
            return True
        ended = ended_trial(result.config, result.metrics)
        return report.interim and ended.entry not in self.files.state.trials

    def check_ended(self, waiting: WaitWatch, unfinished: int) -> None:
        """Raise StudyInterrupted, saying how to go on, unless every trial ended."""
        if self.disk.reason:
            raise StudyError(full_stop(self.disk.reason, self.out_dir))
        if waiting.gave_up:
            raise StudyInterrupted(
                f"resources.wait_timeout_s: trials waited {waiting.timeout:.0f} s for "
                f"{waiting.needs} each with none running (free: {free_resources()}); "
                f"continue with --resume --out {self.out_dir} once the cluster has room"
            )
        if unfinished:
            raise StudyInterrupted(
                f"study interrupted with {unfinished} trial(s) unfinished; continue it with "
                f"--resume --out {self.out_dir} (and the same --spec and --set)"
            )

    def keep_ended(self, ended: EndedTrial, error: str | None) -> TrialRecord:
        """A search trial or test pass as the study keeps it, logged to MLflow once. A test
        pass adds its test curve to its trial's MLflow run."""
        state = self.files.state
        book = state.tests if ended.request.is_test else state.trials
        if ended.entry in book:
            return book[ended.entry]
        failure, result = error, None
        if failure is None and ended.report is not None and ended.report.failed:
            failure = self.files.failure(ended.folder, ended.request.arm)
        if not failure:
            try:
                result = self.files.result(ended.folder)  # now: a test pass may rewrite it
            except StudyError as e:
                failure = str(e)
        record = new_record(self.spec, ended, failure)
        self.files.keep(ended.entry, record)
        self.recorder.log_trial(record, result)
        return record

    def trial_ended(self, ended: EndedTrial, error: str | None) -> None:
        """Record a trial as Tune ends it, and say how far the study is."""
        record = self.keep_ended(ended, error)
        if not ended.request.is_test:
            at = f" at step {record.stopped_at}" if record.stopped_at is not None else ""
            chose = record.selection_metric
            by = "" if chose is None else f", selection {chose:.4f}"  # None: failed
            self.log(f"search trial {record.key}: {record.status}{at}{by} {record.params}")
        else:
            self.log(
                f"test pass {record.key} (seed {record.seed}, "
                f"chosen for {', '.join(record.rules)}): {record.status}"
            )
        state = self.files.state
        searched = sum(not t.superseded for t in state.trials.values())
        total, settled = test_passes(self.spec, state, self.seeds)
        self.log(self.progress.line(searched, len(state.tests), total, settled))
