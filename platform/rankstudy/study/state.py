"""A study's own folder: its state file (what every ended trial was, kept atomically, so a
killed study resumes without losing track of one) and its storage (where the trials' folders
live for every node).

Torch- and Ray-free: `rankstudy export` reads a study's state without either.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ValidationError

from rankstudy.core.records import (
    RESULT_FILE,
    ResultError,
    TrialRecord,
    TrialResult,
    read_failure,
    read_result,
)
from rankstudy.core.spec import StudySpec
from rankstudy.storage.folders import TrialStorage, check_writable
from rankstudy.study.preflight import storage_base

STATE_FILE = "study_state.json"


class StudyError(RuntimeError):
    """A study that cannot start or go on; the message says why."""


class StudyInterrupted(StudyError):
    """Stopped (Ctrl-C, SIGTERM) before every trial ended; --resume continues it."""


class SpecRecord(BaseModel):
    """The spec a study ran, as `rankstudy export` rebuilds it."""

    raw: dict
    overrides: list[str]


class StudyState(BaseModel):
    """study_state.json: search trials and test passes by key, and where the study keeps
    its trials and MLflow records."""

    trials: dict[str, TrialRecord] = {}
    tests: dict[str, TrialRecord] = {}  # by <arm>/<trial folder>/<seed>
    spec: SpecRecord | None = None  # None in states of older rankstudy versions
    storage: str | None = None  # this study's own folder in the storage
    storage_base: str | None = None  # the storage it was made in
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None


def read_state(path: Path, option: str = "--resume") -> StudyState:
    """A study's state file (option: the command's option that named it). It is written
    atomically, so a bad one was damaged from outside the study, and resuming from it would
    lose track of trials."""
    try:
        raw = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise StudyError(
            f"{option}: {path} cannot be read ({e}); restore it from a backup, "
            f"or start the study again in a new --out"
        ) from None
    if not isinstance(raw, dict) or not {"trials", "tests"} <= raw.keys():
        raise StudyError(f"{option}: {path} is not a study state (no trials and tests)")
    try:
        return StudyState.model_validate(raw)
    except ValidationError as e:
        raise StudyError(f"{option}: {path} is not a study state ({e})") from None


LOCK_FILE = ".rankstudy.lock"


def hold_folder(out_dir: Path) -> IO[str]:
    """Hold the study's folder for this driver: a second driver on the same --out is refused at
    once instead of writing the same trial folders, state file and MLflow store. The lock is
    the operating system's (flock), so it goes with this process, however it ends; the file
    names the holder's pid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    held = open(out_dir / LOCK_FILE, "a+")  # noqa: SIM115 (open while the study runs)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.seek(0)
        holder = held.read().strip() or "unknown"
        held.close()
        raise StudyError(
            f"--out: {out_dir} is in use by another study driver (pid {holder}); wait for it "
            f"to end, or choose another --out"
        ) from None
    held.truncate(0)
    held.write(f"{os.getpid()}\n")
    held.flush()
    return held


class StudyFiles:
    """The study's state, saved atomically under one lock (the driver and its MLflow thread
    both update records), and its storage."""

    def __init__(self, spec: StudySpec, out_dir: Path, resume: bool) -> None:
        self.out_dir = out_dir
        self.path = out_dir / STATE_FILE
        if self.path.exists() and not resume:
            raise StudyError(
                f"--out: {out_dir} already holds a study; pass --resume to "
                f"continue it, or choose another --out"
            )
        if resume and not self.path.exists():
            raise StudyError(f"--resume: {out_dir} holds no study to resume")
        check_writable("--out", out_dir)
        self.state = read_state(self.path) if resume else StudyState()
        self.lock = threading.RLock()
        self.storage = TrialStorage(self._storage_of_study(spec, resume), out_dir)

    def _storage_of_study(self, spec: StudySpec, resume: bool) -> str | None:
        """This study's own folder in the storage (spec, else $RANKSTUDY_STORAGE): named after
        the study and made unique, so studies sharing a bucket never share a path; kept in the
        state, so a resumed study finds it again."""
        base = storage_base(spec)  # checked before the study (rankstudy.study.preflight)
        if resume and self.state.storage_base != base:
            raise StudyError(
                f"storage: this study keeps its trials under {self.state.storage_base!r}; "
                f"resume it with that storage, not {base!r}"
            )
        if base and self.state.storage is None:
            self.state.storage = f"{base.rstrip('/')}/{spec.name}-{uuid.uuid4().hex[:8]}"
        self.state.storage_base = base
        return self.state.storage

    def save(self) -> None:
        with self.lock:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state.model_dump(), indent=2))
            tmp.replace(self.path)  # atomic: a kill never leaves half a state file

    def keep(self, entry: str, record: TrialRecord) -> None:
        """Add an ended trial's record (a test pass's when it has rules) and save."""
        with self.lock:
            (self.state.tests if record.is_test else self.state.trials)[entry] = record
            self.save()

    def result(self, out_dir: str | Path) -> TrialResult:
        """A trial's result.json, wherever the node that ran it was (rankstudy.storage.folders)."""
        try:
            return read_result(Path(out_dir) / RESULT_FILE, self.storage.read_text)
        except ResultError as e:
            raise StudyError(str(e)) from None

    def failure(self, out_dir: str | Path, arm: str) -> str:
        """Why a trial failed, as it wrote it (rankstudy.trial.trainable)."""
        try:
            return read_failure(out_dir, arm, self.storage.read_text).reason
        except ResultError as e:
            raise StudyError(str(e)) from None
