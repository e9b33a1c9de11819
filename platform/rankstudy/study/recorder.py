"""A study's MLflow writes: on one background thread, in order, each record marked logged once
written, so a kill or an MLflow outage loses nothing.

Tune calls the study inside its scheduling loop and a trial actor would idle while the driver
talks to the store, hence the thread. When MLflow stops answering, the study goes on recording
to its state file; the writes it missed are redone once it answers (`catch_up`) or by
--resume (`relog`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rankstudy.core.records import TrialRecord, TrialResult
from rankstudy.core.summaries import StudySummary
from rankstudy.study.state import StudyError, StudyFiles
from rankstudy.tracking.figures import curve_figure
from rankstudy.tracking.tracker import StudyTracker


class MlflowRecorder:
    def __init__(
        self, files: StudyFiles, tracker: StudyTracker, log: Callable[[str], None]
    ) -> None:
        self.files = files
        self.tracker = tracker
        self.log = log
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self.pending: list[Future] = []
        self.failed: str | None = None  # why MLflow stopped taking writes (they wait for relog)

    def start(self, name: str, spec: dict, tags: dict[str, str] | None = None) -> str:
        """Open (or, resumed, reopen) the study's parent run with its tags; note it in the
        state."""
        state = self.files.state
        state.parent_run_id = self.tracker.start_study(name, spec, state.parent_run_id, tags)
        state.tracking_uri = self.tracker.uri
        state.experiment_id = self.tracker.experiment_id
        self.files.save()
        return state.parent_run_id

    def track(self, job: Callable[[], object], record: TrialRecord | None = None) -> None:
        """Queue an MLflow write; the record it belongs to is marked logged once it is done,
        so a resumed study knows which writes a kill cut off."""
        self.pending.append(self.pool.submit(self._write, job, record))

    def _write(self, job: Callable[[], object], record: TrialRecord | None) -> None:
        if self.failed:
            return  # in order: this write waits, unlogged, for relog() like the one before
        try:
            job()  # MLflow's client retries each request (about 4 min of backoff)
        except Exception as e:  # the tracking server is gone: the study goes on
            self.failed = f"{type(e).__name__}: {str(e)[:300]}"
            self.log(
                f"MLflow at {self.tracker.uri} failed a write ({self.failed}); the study goes "
                f"on and records to {self.files.path.name}, and writes to MLflow again once "
                f"it answers"
            )
            return
        if record is not None:
            with self.files.lock:
                record.logged = True
                self.files.save()

    def flush(self) -> None:
        """Wait for every queued write; raise the first that failed."""
        for write in self.pending:
            write.result()
        self.pending.clear()

    def log_trial(self, record: TrialRecord, result: TrialResult | None) -> None:
        self.track(lambda: self.tracker.log_trial(record, result), record)

    def drop_trial(self, key: str) -> None:
        self.track(lambda: self.tracker.delete_trial(key))

    def relog(self) -> None:
        """On resume: redo the MLflow writes that a kill cut off (a search trial's partial run
        is replaced; its test curve comes from its test pass's own write)."""
        for record in [*self.files.state.trials.values(), *self.files.state.tests.values()]:
            if record.logged or record.superseded:
                continue
            result = None if record.failure else self.files.result(record.out_dir)
            if not record.is_test:
                self.drop_trial(record.key)
                if result is not None:
                    result = result.model_copy(update={"scores_by_rule": {}})
            self.log_trial(record, result)
        self.flush()

    def catch_up(self, out_dir: Path) -> None:
        """After an MLflow outage: write what it missed, or stop with the way to write it later.
        Every record is in the state file and every result in its trial's folder, so nothing is
        lost; --resume writes the missing records (relog) and finishes the study."""
        if not self.failed:
            return
        self.failed = None
        self.log(f"MLflow at {self.tracker.uri}: writing the records it missed")
        self.relog()
        if self.failed:
            raise StudyError(
                f"tracking.uri: MLflow at {self.tracker.uri} did not take the study's records "
                f"({self.failed}). Every trial is recorded in {self.files.path}; once "
                f"the server answers, write them with --resume --out {out_dir} (and the "
                f"same --spec and --set)"
            )

    def log_summary(
        self, summary: StudySummary, figures: Path, searches: Path | None = None
    ) -> None:
        """The study's end: the reference and base curves, each method's summary run with its
        figure (and its intervals, when the study has a verdict), the arms' Optuna searches
        (`searches`, when the study searched), the summary and the verdict; the parent run
        FAILED when a method is missing."""
        if summary.reference is not None:
            self.tracker.log_reference(summary.reference)
        if summary.base_scores is not None:
            self.tracker.log_base(summary.base_scores)
        for m, s in summary.methods.items():
            figure = curve_figure(m, s, summary.reference, figures / f"{m}.png")
            self.tracker.log_method(m, s, figure, summary.verdict)
        if searches is not None and searches.exists():  # none: nothing was searched
            self.tracker.log_searches(searches)
        self.tracker.finish_study(summary, "FAILED" if summary.missing else "FINISHED")
