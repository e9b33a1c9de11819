"""A study: every arm tuned with the same Optuna search under Ray Tune, the best trial of each
arm (chosen on validation) scored on test, repeated over seeds, summarised per method, and
recorded in MLflow.

Each Tune trial is a function that trains one arm with one set of hyperparameters: in its own
(reused) actor when the spec asks for one worker, or as a Ray Train TorchTrainer over several
workers. All arms share one Tuner (rankstudy.search.ArmSearch). Crashed trials are retried
from their last checkpoint (FailureConfig); a study killed mid-way continues with --resume,
rerunning nothing that finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mlflow.exceptions import MlflowException
from ray import tune
from requests import RequestException

from rankstudy.arms import parse_arm
from rankstudy.figures import curve_figure
from rankstudy.model_fit import check_fits_model
from rankstudy.progress import StudyProgress
from rankstudy.ray_cluster import answers
from rankstudy.scoring import (
    METHOD_ARMS,
    method_arms,
    method_rule,
    score_method,
    study_arms,
    study_rules,
)
from rankstudy.spec import load_spec, read_spec_file
from rankstudy.storage import TrialStorage, check_storage_uri, check_writable
from rankstudy.tracking import StudyTracker, tracking_uri
from rankstudy.trainable import FAILED_METRIC, trial_bundles, trial_resources, tune_trial
from rankstudy.waiting import WaitWatch, free_resources

STATE_FILE = "study_state.json"


class StudyError(RuntimeError):
    """A study that cannot start or go on; the message says why."""


class StudyInterrupted(StudyError):
    """Stopped (Ctrl-C, SIGTERM) before every trial ended; --resume continues it."""


class _Writer:
    """One background thread for the driver's MLflow writes, in order."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self.pending: list[Future] = []
        self.failed: str | None = None  # why MLflow stopped taking writes (they wait for relog)

    def submit(self, job) -> None:
        self.pending.append(self.pool.submit(job))

    def flush(self) -> None:
        """Wait for every queued write; raise the first that failed."""
        for write in self.pending:
            write.result()
        self.pending.clear()


# The studies running in this process, by output folder (see _Recorder).
_LIVE: dict[str, Study] = {}


class _Recorder(tune.Callback):
    """Logs each trial to MLflow as it ends, from the driver, and prints a progress line.

    Tune pickles its callbacks into the experiment state and a restored Tuner unpickles them:
    the recorder keeps only the study's folder and finds the running Study by it, so a resumed
    study records into itself, never into a stale copy writing the same state file."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = str(out_dir)

    @property
    def study(self) -> Study:
        return _LIVE[self.out_dir]

    def _ended(self, trial, error: str | None) -> None:
        study = self.study
        record = study.record(trial.config, trial.last_result or {}, error)
        if trial.config["phase"] == "search":
            study.log(
                f"search trial {record['key']}: {record['status']}, "
                f"selection {record['selection_metric']:.4f} {record['params']}"
            )
        else:
            study.log(
                f"test pass {record['key']} (seed {trial.config['seed']}, "
                f"chosen for {', '.join(trial.config['rules'])}): {record['status']}"
            )
        searched = sum(not t.get("superseded") for t in study.state["trials"].values())
        study.log(study.progress.line(searched, len(study.state["tests"]), *study.test_passes()))

    def on_step_begin(self, iteration, trials, **info) -> None:
        waiting = self.study.waiting
        if not waiting.gave_up:
            waiting.step(trials)
            if waiting.gave_up:  # Tune's own stop on Ctrl-C: resumable, every trial kept
                os.kill(os.getpid(), signal.SIGINT)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(
            trial, f"trial {trial.trial_id} crashed {trial.num_failures} times; see {trial.path}"
        )


class Study:
    def __init__(
        self, spec_path: str, overrides: list[str], out_dir: str | None, resume: bool
    ) -> None:
        self.spec = load_spec(spec_path, overrides)  # every input error before any compute
        check_fits_model(self.spec)
        self.raw = read_spec_file(spec_path)
        self.spec_path = spec_path
        rules = json.dumps(study_rules(self.spec))
        self.overrides = [*overrides, f"adapters.inference_rules={rules}"]
        self.out_dir = Path(out_dir or f"runs/{self.spec.name}").resolve()
        self.state_path = self.out_dir / STATE_FILE
        if self.state_path.exists() and not resume:
            raise StudyError(
                f"--out: {self.out_dir} already holds a study; pass --resume to "
                f"continue it, or choose another --out"
            )
        if resume and not self.state_path.exists():
            raise StudyError(f"--resume: {self.out_dir} holds no study to resume")
        check_writable("--out", self.out_dir)
        self.state = self.read_state() if resume else {"trials": {}, "tests": {}}
        self.storage = TrialStorage(self.storage_of_study(), self.out_dir)
        self.state["spec"] = {"raw": self.raw, "overrides": self.overrides}  # for `export`
        self.seeds = self.spec.seeds or [self.spec.seed]
        self.resume = resume
        # MLflow writes go to one background thread in order: Tune calls the recorder inside its
        # scheduling loop, and a trial actor would idle while the driver talks to the store.
        self.writer = _Writer()

    def storage_of_study(self) -> str | None:
        """This study's own folder in the storage (spec, else $RANKSTUDY_STORAGE): named after
        the study and made unique, so studies sharing a bucket never share a path; kept in the
        state, so a resumed study finds it again."""
        base = self.spec.storage or os.environ.get("RANKSTUDY_STORAGE") or None
        field = "storage" if self.spec.storage else "RANKSTUDY_STORAGE"
        try:
            check_storage_uri(base)
        except ValueError as e:
            raise StudyError(f"{field}: {e}") from None
        if base and base.startswith("/"):  # a shared disk: it must be there, not made here
            check_writable(field, Path(base), must_exist=True)
        if self.state.get("storage_base", base) != base:
            raise StudyError(
                f"storage: this study keeps its trials under {self.state['storage_base']!r}; "
                f"resume it with that storage, not {base!r}"
            )
        if base and "storage" not in self.state:
            self.state["storage"] = f"{base.rstrip('/')}/{self.spec.name}-{uuid.uuid4().hex[:8]}"
        self.state["storage_base"] = base
        return self.state.get("storage")

    def read_state(self) -> dict:
        """The state file of the study to resume; written atomically, so a bad one was
        damaged from outside the study, and resuming from it would lose track of trials."""
        try:
            state = json.loads(self.state_path.read_text())
        except (ValueError, OSError) as e:
            raise StudyError(
                f"--resume: {self.state_path} cannot be read ({e}); restore it from a backup, "
                f"or start the study again in a new --out"
            ) from None
        if not isinstance(state, dict) or not {"trials", "tests"} <= state.keys():
            raise StudyError(
                f"--resume: {self.state_path} is not a study state (no trials and tests)"
            )
        return state

    def save_state(self) -> None:
        with self.writer.lock:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=2))
            tmp.replace(self.state_path)  # atomic: a kill never leaves half a state file

    def track(self, job, record: dict | None = None) -> None:
        """Queue an MLflow write; the record it belongs to is marked logged once it is done,
        so a resumed study knows which writes a kill cut off."""

        def run() -> None:
            if self.writer.failed:
                return  # in order: this write waits, unlogged, for relog() like the one before
            try:
                job()  # MLflow's client retries each request (about 4 min of backoff)
            except Exception as e:  # the tracking server is gone: the study goes on
                self.writer.failed = f"{type(e).__name__}: {str(e)[:300]}"
                self.log(
                    f"MLflow at {self.tracker.uri} failed a write ({self.writer.failed}); the "
                    f"study goes on and records to {self.state_path.name}, and writes to MLflow "
                    f"again once it answers"
                )
                return
            if record is not None:
                with self.writer.lock:
                    record["logged"] = True
                    self.save_state()

        self.writer.submit(run)

    def flush(self) -> None:
        self.writer.flush()

    def log_record(self, record: dict, result: dict | None) -> None:
        self.track(lambda: self.tracker.log_trial(record, result), record)

    def relog(self) -> None:
        """On resume: redo the MLflow writes that a kill cut off (a search trial's partial run
        is replaced; its test curve comes from its test pass's own write)."""
        for phase, book in (("search", self.state["trials"]), ("test", self.state["tests"])):
            for record in book.values():
                if record.get("logged", True) or record.get("superseded"):
                    continue
                result = None if record["failure"] else self.result(record["out_dir"])
                if phase == "search":
                    self.track(lambda k=record["key"]: self.tracker.delete_trial(k))
                    if result is not None:
                        result = {k: v for k, v in result.items() if k != "scores_by_rule"}
                self.log_record(record, result)
        self.flush()

    def catch_up(self) -> None:
        """After an MLflow outage: write what it missed, or stop with the way to write it later.
        Every record is in the state file and every result in its trial's folder, so nothing is
        lost; --resume writes the missing records (relog) and finishes the study."""
        if not self.writer.failed:
            return
        self.writer.failed = None
        self.log(f"MLflow at {self.tracker.uri}: writing the records it missed")
        self.relog()
        if self.writer.failed:
            raise StudyError(
                f"tracking.uri: MLflow at {self.tracker.uri} did not take the study's records "
                f"({self.writer.failed}). Every trial is recorded in {self.state_path}; once "
                f"the server answers, write them with --resume --out {self.out_dir} (and the "
                f"same --spec and --set)"
            )

    def result(self, out_dir: str | Path) -> dict:
        """A trial's result.json, wherever the node that ran it was (rankstudy.storage)."""
        path = Path(out_dir) / "result.json"
        try:
            return self.storage.read_json(path)
        except ValueError as e:  # trials write it atomically: damaged from outside the study
            raise StudyError(f"{path} cannot be read (cut short or corrupt: {e})") from None

    def log(self, message: str) -> None:
        print(f"[study {self.spec.name}] {message}", flush=True)

    # -- the study -----------------------------------------------------------------------------
    def run(self) -> dict:
        _LIVE[str(self.out_dir)] = self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri(self.spec.tracking.uri, self.out_dir)
        if uri.startswith(("http://", "https://")) and not answers(uri):
            raise StudyError(f"tracking.uri: nothing answers at {uri} (the MLflow server)")
        self.tracker = StudyTracker(uri, self.spec.tracking.experiment or self.spec.name)
        parent = self.tracker.start_study(
            self.spec.name, self.spec.model_dump(mode="json"), self.state.get("parent_run_id")
        )
        self.state |= {
            "parent_run_id": parent,
            "tracking_uri": uri,
            "experiment_id": self.tracker.experiment_id,
        }
        self.save_state()
        start = time.perf_counter()
        try:
            self.relog()
            self.search()
            self.flush()
            self.catch_up()
            chosen, missing = self.chosen_results()
        except BaseException:
            with contextlib.suppress(Exception):  # MLflow may be what failed
                self.tracker.client.set_terminated(parent, "KILLED")
            raise
        try:
            summary = self.summarise(chosen, missing, time.perf_counter() - start)
            self.tracker.finish_study(summary, "FAILED" if summary["missing"] else "FINISHED")
        except (MlflowException, RequestException) as e:  # its summary file is written
            raise StudyError(
                f"tracking.uri: MLflow at {self.tracker.uri} failed while taking the summary "
                f"({type(e).__name__}: {str(e)[:300]}); {self.out_dir / 'study_summary.json'} "
                f"holds it; once the server answers, --resume --out {self.out_dir} writes it"
            ) from None
        try:
            summary["report"] = self.report()
        except Exception as e:  # everything is recorded; the report can be built again later
            summary["report"] = None
            self.log(
                f"report: not built ({type(e).__name__}: {e}); build it with "
                f"rankstudy report --run {parent} --tracking-uri {self.state['tracking_uri']}"
            )
        (self.out_dir / "study_summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def report(self) -> str:
        """Build the HTML report from what MLflow now holds, and log it to the parent run."""
        from rankstudy_report import build_report

        path = build_report(
            self.state["tracking_uri"], self.out_dir / "report", run_id=self.state["parent_run_id"]
        )
        self.log(f"report: {path}")
        return str(path)

    def search(self) -> None:
        """Every arm's trials under one Tuner; resumes the Tuner after a kill."""
        from rankstudy.search import ArmSearch, upper_bound

        s = self.spec.search
        arms = study_arms(self.spec)
        rules = {arm: self.arm_rules(arm) for arm in arms}
        self.log(f"{len(arms)} arms x {s.trials_per_arm} trials: {', '.join(arms)}")
        self.progress = StudyProgress(len(arms) * s.trials_per_arm)
        needs = ", ".join(f"{b}" for b in trial_bundles(self.spec))
        timeout = self.spec.resources.wait_timeout_s
        self.waiting = WaitWatch(needs, timeout, self.log, every=min(30.0, timeout / 2))
        trainable = tune.with_resources(tune_trial, trial_resources(self.spec))
        path = f"{self.storage.path_of('tune')}/search"
        if self.resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "spec": self.raw,
                    "overrides": self.overrides,
                    "study_dir": str(self.out_dir),
                    "storage": self.storage.uri,
                },
                tune_config=tune.TuneConfig(
                    search_alg=ArmSearch(rules, s.space, s.trials_per_arm, s.seed, self.seeds),
                    num_samples=upper_bound(rules, s.trials_per_arm, len(self.seeds)),
                    reuse_actors=True,
                    max_concurrent_trials=self.max_concurrent(),
                ),
                run_config=tune.RunConfig(
                    name="search",
                    storage_path=self.storage.path_of("tune"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=2),
                    callbacks=[_Recorder(self.out_dir)],
                ),
            )
        # Tune keeps one trial pending at a time behind a custom searcher, so the second slot's
        # actor would start only once the first is up; let every slot's actor start at once.
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(self.slots()))
        kept = set()
        unfinished = 0
        for result in tuner.fit():  # trials that ended before a resume are recorded here
            if result.error is None and "selection_metric" not in (result.metrics or {}):
                unfinished += 1  # stopped by an interrupt: a resume runs it again
                continue
            record = self.record(
                result.config,
                result.metrics or {},
                None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            )
            kept.add(record["key"])
        self.drop_superseded(kept)
        if self.waiting.gave_up:
            raise StudyInterrupted(
                f"resources.wait_timeout_s: trials waited {self.waiting.timeout:.0f} s for "
                f"{self.waiting.needs} each with none running (free: {free_resources()}); "
                f"continue with --resume --out {self.out_dir} once the cluster has room"
            )
        if unfinished:
            raise StudyInterrupted(
                f"study interrupted with {unfinished} trial(s) unfinished; continue it with "
                f"--resume --out {self.out_dir} (and the same --spec and --set)"
            )

    def drop_superseded(self, kept: set[str]) -> None:
        """A kill can land after a trial ended (and was recorded) but before Tune saved that;
        the resumed Tuner then runs the same suggestion again under a new id. The earlier copy
        leaves the search (selection and trial counts) and MLflow; its compute stays in the
        method's cost, since it was spent."""
        for key, record in self.state["trials"].items():
            if key not in kept and not record.get("superseded"):
                with self.writer.lock:
                    record["superseded"] = True
                self.track(lambda k=key: self.tracker.delete_trial(k))
                self.log(f"{key}: superseded by its rerun after the resume")
        self.save_state()

    def slots(self) -> int:
        """How many trials the cluster holds at once now."""
        import ray

        kind = "GPU" if self.spec.resources.use_gpu else "CPU"
        per_trial = sum(b.get(kind, 0) for b in trial_bundles(self.spec))
        return max(1, int(ray.cluster_resources().get(kind, 0)) // per_trial)

    def max_concurrent(self) -> int | None:
        """Multi-worker trials: as many as the cluster holds at once, each driver with its
        workers. One-worker trials: Tune packs them by their resources."""
        return self.slots() if self.spec.resources.workers > 1 else None

    def record(self, config: dict, metrics: dict, error: str | None) -> dict:
        """A search trial or test pass as the study keeps it, logged to MLflow once. A test
        pass adds its test curve to its trial's MLflow run."""
        arm = config["arm"]
        params = {
            k.removeprefix("param:").replace("__", "."): v for k, v in config.items() if "__" in k
        }
        out_dir = Path(
            metrics.get("out_dir")
            or config.get("test_of")
            or Path(config["study_dir"]) / "trials" / arm / metrics.get("trial_id", "x")
        )
        if config["phase"] == "test" and not config["first_seed"]:
            out_dir = Path(f"{config['test_of']}-seed{config['seed']}")
        key = f"{arm}/{out_dir.name}"
        book = self.state["trials"] if config["phase"] == "search" else self.state["tests"]
        entry_key = key if config["phase"] == "search" else f"{key}/{config['seed']}"
        if entry_key in book:
            return book[entry_key]
        failure = error
        if failure is None and metrics.get("failed"):
            failure = self.storage.read_text(out_dir / "failure.txt")
        result = None
        if not failure:
            try:
                result = self.result(out_dir)  # now: a test pass may rewrite it
            except StudyError as e:
                failure = str(e)
        shape = parse_arm(arm, self.spec)
        record = {
            "key": key,
            "arm": arm,
            "method": shape.method,
            "rank": str(shape.max_rank) if shape.method == "lora" else f"1-{shape.max_rank}",
            "trial": config.get("trial"),
            "out_dir": str(out_dir),
            "params": params,
            "status": "failed" if failure else "ok",
            "failure": failure,
            "selection_metric": metrics.get("selection_metric", FAILED_METRIC),
            "selection_by_rule": {
                k.removeprefix("selection_"): v
                for k, v in metrics.items()
                if k.startswith("selection_") and k != "selection_metric"
            },
            "node": metrics.get("node"),
            "logged": False,
        }
        if config["phase"] == "test":
            record |= {"rules": config["rules"], "seed": config["seed"]}
        with self.writer.lock:
            book[entry_key] = record
            self.save_state()
        self.log_record(record, result)
        return record

    def test_passes(self) -> tuple[int, bool]:
        """How many test passes the study runs, and whether that is exact: an arm whose search
        ended has one per seed for each trial its rules chose (the searcher's own `choose`);
        an arm still searching counts one per rule and seed, the most it can have."""
        from rankstudy.search import choose

        total, settled = 0, True
        for arm in study_arms(self.spec):
            rules = self.arm_rules(arm)
            ended = [
                t
                for t in self.state["trials"].values()
                if t["arm"] == arm and not t.get("superseded")
            ]
            if len(ended) < self.spec.search.trials_per_arm:
                total, settled = total + len(rules) * len(self.seeds), False
                continue
            ok = [
                {
                    "index": t["trial"],
                    **t,
                    **{f"selection_{r}": v for r, v in t.get("selection_by_rule", {}).items()},
                }
                for t in ended
                if t["status"] == "ok"
            ]
            total += len(choose(ok, rules)) * len(self.seeds)
        return total, settled

    def arm_rules(self, arm: str) -> list[str]:
        """The inference rules the spec's methods serve this arm with."""
        return list(
            dict.fromkeys(
                rule
                for m in self.spec.methods
                for a, rule in [METHOD_ARMS[m]]
                if arm in method_arms(m, self.spec)
            )
        )

    def chosen_results(self) -> tuple[dict, dict]:
        """(arm, rule) -> {seed: result.json} of the trials the search chose and tested, and
        (arm, rule) -> why nothing can be scored for it (a failed arm or test pass)."""
        chosen: dict = {}
        missing: dict = {}
        for t in self.state["tests"].values():
            for rule in t["rules"]:
                if t["status"] != "ok":
                    missing[(t["arm"], rule)] = (
                        f"the test pass of {t['key']} at seed {t['seed']} failed: {t['failure']}"
                    )
                else:
                    chosen.setdefault((t["arm"], rule), {})[t["seed"]] = self.result(t["out_dir"])
        for arm in study_arms(self.spec):
            for rule in self.arm_rules(arm):
                complete = len(chosen.get((arm, rule), {})) == len(self.seeds)
                if not complete and (arm, rule) not in missing:
                    missing[(arm, rule)] = (
                        f"arm {arm}: no trial succeeded; see "
                        f"{self.storage.path_of(f'trials/{arm}')}"
                    )
        return chosen, missing

    # -- the summary ---------------------------------------------------------------------------
    def spent(self, arm: str) -> list[dict]:
        """Every result this arm spent compute on: search trials, test passes, seed repeats."""
        dirs = {
            t["out_dir"]
            for t in self.state["trials"].values()
            if t["arm"] == arm and t["status"] == "ok"
        }
        dirs |= {
            t["out_dir"]
            for t in self.state["tests"].values()
            if t["arm"] == arm and t["status"] == "ok"
        }
        return [self.result(d) for d in sorted(dirs)]

    def summarise(self, chosen: dict, missing: dict, wall: float) -> dict:
        """Score every method whose arms have chosen, tested trials; name the others and why."""
        methods, gaps = {}, {}
        spent = {arm: self.spent(arm) for arm in study_arms(self.spec)}  # read each result once
        for m in self.spec.methods:
            arms = method_arms(m, self.spec)
            why = [missing[(a, method_rule(m))] for a in arms if (a, method_rule(m)) in missing]
            if why:
                gaps[m] = "; ".join(why)
                self.log(f"{m}: not scored: {gaps[m]}")
                continue
            methods[m] = score_method(
                m, self.spec, chosen, [r for a in arms for r in spent[a]], self.seeds
            )
            methods[m]["trials"] = sum(
                1
                for t in self.state["trials"].values()
                if t["arm"] in arms and not t.get("superseded")
            )
        reference = next(
            (
                r["reference"]
                for by_seed in chosen.values()
                for r in by_seed.values()
                if "reference" in r
            ),
            None,
        )
        base = next(  # the base model's test scores, from the one test pass that measured them
            (
                r["base_scores"]
                for by_seed in chosen.values()
                for r in by_seed.values()
                if "base_scores" in r
            ),
            None,
        )
        summary = {
            "study": self.spec.name,
            "spec": str(Path(self.spec_path).resolve()),
            "seeds": self.seeds,
            "wall_seconds": wall,
            # device time set-up took that every trial reuses (the planted task's calibration)
            "shared_setup_seconds": sum(
                r["cost"].get("shared_setup_seconds", 0.0) * r["cost"]["devices"]
                for results in spent.values()
                for r in results
            ),
            "methods": methods,
            "missing": gaps,
            "mlflow": {
                "tracking_uri": self.state["tracking_uri"],
                "experiment_id": self.state["experiment_id"],
                "parent_run_id": self.state["parent_run_id"],
            },
        }
        if reference is not None:
            summary["reference"] = reference
            self.tracker.log_reference(reference)
        if base is not None:
            summary["base_scores"] = base
            self.tracker.log_base(base)
        (self.out_dir / "study_summary.json").write_text(json.dumps(summary, indent=2))
        for m, s in methods.items():
            figure = curve_figure(m, s, reference, self.out_dir / "figures" / f"{m}.png")
            self.tracker.log_method(m, s, figure)
        return summary


def summary_table(summary: dict) -> str:
    """The methods side by side: AURAC (log2, linear), compute and device-seconds."""
    from rankstudy.metrics import aurac

    several = len(summary["seeds"]) > 1
    spread = f"{'± seeds':>8}" if several else ""
    lines = [
        f"{'method':<30}{'AURAC log2':>11}{spread}{'linear':>8}{'trials':>7}{'FLOPs':>10}"
        f"{'device-s':>10}"
    ]
    for name, m in summary["methods"].items():
        spread = f"{m['aurac_log2_std']:>8.3f}" if several else ""
        lines.append(
            f"{name:<30}{m['aurac_log2']:>11.3f}{spread}{m['aurac_linear']:>8.3f}"
            f"{m['trials']:>7}{m['cost']['flops']:>10.2e}{m['cost']['device_seconds']:>10.1f}"
        )
    if summary.get("shared_setup_seconds"):
        lines.append(
            f"task set-up shared by every trial (in no method's cost): "
            f"{summary['shared_setup_seconds']:.1f} device-s"
        )
    for name, why in summary.get("missing", {}).items():
        lines.append(f"{name:<30}   not scored: {why}")
    metric = next(iter(summary["methods"].values()), {}).get("metric", "score")
    if summary["methods"]:
        lines.append(f"AURAC of the test {metric} over the evaluation ranks")
    if "base_scores" in summary:
        lines.append(
            "base model (no adapter): "
            + ", ".join(
                f"{metric if k == 'score' else k} {v:.3f}"
                for k, v in summary["base_scores"].items()
            )
        )
    if "reference" in summary:
        ranks = sorted(int(k) for k in summary["reference"])
        scores = [summary["reference"][str(r)] for r in ranks]
        lines.append(
            f"{'reference (planted, top-k)':<30}{aurac(ranks, scores):>11.3f}"
            f"{aurac(ranks, scores, 'linear'):>8.3f}"
        )
    return "\n".join(lines)
