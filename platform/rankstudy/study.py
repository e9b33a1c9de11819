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

import json
import time
from pathlib import Path

import yaml
from ray import tune

from rankstudy.figures import curve_figure
from rankstudy.scoring import METHOD_ARMS, method_arms, score_method, study_arms, study_rules
from rankstudy.spec import StudySpec, load_spec, parse_spec
from rankstudy.tracking import StudyTracker, tracking_uri

STATE_FILE = "study_state.json"
FAILED_METRIC = -1.0  # what a deterministically failed trial reports to the searcher


class StudyError(RuntimeError):
    """A study that cannot start or go on; the message says why."""


def execute(config: dict, storage: str) -> dict:
    """Run one trial config where it is: this process for one worker, Ray Train for more."""
    from rankstudy.trial import run_trial

    if parse_spec(config["spec"], config.get("overrides", ())).resources.workers == 1:
        return run_trial(config)
    from rankstudy.ray_train import fit_trial

    return fit_trial(config, storage, Path(config["out_dir"]).name)


def search_overrides(config: dict) -> list[str]:
    """Sampled values ('training__lr', or 'param:training__lr' as a test pass carries its
    trial's) as spec overrides."""
    return [
        f"{k.removeprefix('param:').replace('__', '.')}={json.dumps(v)}"
        for k, v in config.items()
        if "__" in k
    ]


def tune_trial(config: dict) -> None:
    """The Tune trainable. phase "search": train one arm with the sampled hyperparameters and
    validate. phase "test": score a chosen trial on test (resuming at its final checkpoint),
    or train and score it again at another seed."""
    from rankstudy.trial import TrialFailed

    study_dir = Path(config["study_dir"])
    overrides = [*config["overrides"], *search_overrides(config)]
    if config["phase"] == "search":
        out_dir = study_dir / "trials" / config["arm"] / tune.get_context().get_trial_id()
        splits = ["validation"]
    elif config["first_seed"]:
        out_dir, splits = Path(config["test_of"]), ["test"]
    else:
        out_dir = Path(f"{config['test_of']}-seed{config['seed']}")
        overrides.append(f"seed={config['seed']}")
        splits = ["validation", "test"]
    trial_config = {
        "spec": config["spec"],
        "arm": config["arm"],
        "out_dir": str(out_dir),
        "overrides": overrides,
        "splits": splits,
        "cache_dir": str(study_dir / "cache"),
    }
    params = {f"param:{k.removeprefix('param:')}": v for k, v in config.items() if "__" in k}
    try:
        result = execute(trial_config, str(study_dir / "ray"))
    except TrialFailed as e:  # deterministic: report it instead of retrying it
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "failure.txt").write_text(str(e))
        tune.report(
            {"selection_metric": FAILED_METRIC, "failed": True, "out_dir": str(out_dir), **params}
        )
        return
    tune.report(
        {
            "selection_metric": result["selection_metric"],
            "failed": False,
            "out_dir": str(out_dir),
            **params,
            **{f"selection_{r}": v for r, v in result["selection_metric_by_rule"].items()},
        }
    )


def trial_resources(spec: StudySpec) -> dict:
    r = spec.resources
    if r.workers > 1:  # the function drives a TorchTrainer, whose workers hold the devices;
        return {"CPU": 1}  # give Ray logical CPUs = cores + concurrent trials (cli.connect_ray)
    return {"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})}


class _Recorder(tune.Callback):
    """Logs each trial to MLflow as it ends, from the driver, and prints a progress line."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.done = 0

    def _ended(self, trial, error: str | None) -> None:
        record = self.study.record(trial.config, trial.last_result or {}, error)
        if trial.config["phase"] == "search":
            self.done += 1
            total = len(study_arms(self.study.spec)) * self.study.spec.search.trials_per_arm
            self.study.log(
                f"trial {self.done}/{total} {record['key']}: {record['status']}, "
                f"selection {record['selection_metric']:.4f} {record['params']}"
            )
        else:
            self.study.log(
                f"test pass {record['key']} (seed {trial.config['seed']}, "
                f"chosen for {', '.join(trial.config['rules'])}): {record['status']}"
            )

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
        self.raw = yaml.safe_load(Path(spec_path).read_text())
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
        self.state = (
            json.loads(self.state_path.read_text()) if resume else {"trials": {}, "tests": {}}
        )
        self.seeds = self.spec.seeds or [self.spec.seed]
        self.resume = resume

    def save_state(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_path)  # atomic: a kill never leaves half a state file

    def log(self, message: str) -> None:
        print(f"[study {self.spec.name}] {message}", flush=True)

    # -- the study -----------------------------------------------------------------------------
    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri(self.spec.tracking.uri, self.out_dir)
        self.tracker = StudyTracker(uri, self.spec.tracking.experiment or self.spec.name)
        parent = self.tracker.start_study(self.spec.name, self.raw, self.state.get("parent_run_id"))
        self.state |= {
            "parent_run_id": parent,
            "tracking_uri": uri,
            "experiment_id": self.tracker.experiment_id,
        }
        self.save_state()
        start = time.perf_counter()
        try:
            self.search()
            chosen = self.chosen_results()
        except BaseException:
            self.tracker.client.set_terminated(parent, "KILLED")
            raise
        summary = self.summarise(chosen, time.perf_counter() - start)
        self.tracker.finish_study(summary)
        return summary

    def search(self) -> None:
        """Every arm's trials under one Tuner; resumes the Tuner after a kill."""
        from rankstudy.search import ArmSearch, upper_bound

        s = self.spec.search
        arms = study_arms(self.spec)
        rules = {arm: self.arm_rules(arm) for arm in arms}
        self.log(f"{len(arms)} arms x {s.trials_per_arm} trials: {', '.join(arms)}")
        trainable = tune.with_resources(tune_trial, trial_resources(self.spec))
        path = self.out_dir / "tune" / "search"
        if self.resume and tune.Tuner.can_restore(str(path)):
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "spec": self.raw,
                    "overrides": self.overrides,
                    "study_dir": str(self.out_dir),
                },
                tune_config=tune.TuneConfig(
                    search_alg=ArmSearch(rules, s.space, s.trials_per_arm, s.seed, self.seeds),
                    num_samples=upper_bound(rules, s.trials_per_arm, len(self.seeds)),
                    reuse_actors=True,
                    max_concurrent_trials=self.max_concurrent(),
                ),
                run_config=tune.RunConfig(
                    name="search",
                    storage_path=str(self.out_dir / "tune"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=2),
                    callbacks=[_Recorder(self)],
                ),
            )
        kept = set()
        for result in tuner.fit():  # trials that ended before a resume are recorded here
            record = self.record(
                result.config,
                result.metrics or {},
                None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            )
            kept.add(record["key"])
        self.drop_superseded(kept)

    def drop_superseded(self, kept: set[str]) -> None:
        """A kill can land after a trial ended (and was recorded) but before Tune saved that;
        the resumed Tuner then runs the same suggestion again under a new id. The earlier copy
        leaves the search (selection and trial counts) and MLflow; its compute stays in the
        method's cost, since it was spent."""
        for key, record in self.state["trials"].items():
            if key not in kept and not record.get("superseded"):
                record["superseded"] = True
                self.tracker.delete_trial(key)
                self.log(f"{key}: superseded by its rerun after the resume")
        self.save_state()

    def max_concurrent(self) -> int | None:
        """Multi-worker trials: as many as the cluster holds at once, each driver with its
        workers. One-worker trials: Tune packs them by their resources."""
        import ray

        r = self.spec.resources
        if r.workers == 1:
            return None
        have = ray.cluster_resources()
        if r.use_gpu:
            return max(1, int(have.get("GPU", 0)) // r.workers)
        return max(1, int(have.get("CPU", 1)) // (r.workers * r.cpus_per_worker + 1))

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
            failure = (out_dir / "failure.txt").read_text()
        result = None if failure else _read(str(out_dir))
        method = result["method"] if result else arm
        self.tracker.log_trial(key, arm, method, params, result, failure)
        record = {
            "key": key,
            "arm": arm,
            "out_dir": str(out_dir),
            "params": params,
            "status": "failed" if failure else "ok",
            "failure": failure,
            "selection_metric": metrics.get("selection_metric", FAILED_METRIC),
        }
        if config["phase"] == "test":
            record |= {"rules": config["rules"], "seed": config["seed"]}
        book[entry_key] = record
        self.save_state()
        return record

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

    def chosen_results(self) -> dict:
        """(arm, rule) -> {seed: result.json} of the trials the search chose and tested."""
        chosen: dict = {}
        for t in self.state["tests"].values():
            if t["status"] != "ok":
                raise StudyError(f"test pass of {t['key']} failed: {t['failure']}")
            for rule in t["rules"]:
                chosen.setdefault((t["arm"], rule), {})[t["seed"]] = _read(t["out_dir"])
        for arm in study_arms(self.spec):
            for rule in self.arm_rules(arm):
                if len(chosen.get((arm, rule), {})) != len(self.seeds):
                    raise StudyError(
                        f"arm {arm}: no trial succeeded, nothing to score for "
                        f"{rule}; see {self.out_dir / 'trials' / arm}"
                    )
        return chosen

    # -- the summary ---------------------------------------------------------------------------
    def spent(self, arm: str) -> list[dict]:
        """Every result this arm spent compute on: search trials, test passes, seed repeats."""
        dirs = {
            t["out_dir"]
            for t in self.state["trials"].values()
            if t["arm"] == arm and t["status"] == "ok"
        }
        dirs |= {t["out_dir"] for t in self.state["tests"].values() if t["arm"] == arm}
        return [_read(d) for d in sorted(dirs)]

    def summarise(self, chosen: dict, wall: float) -> dict:
        methods = {}
        for m in self.spec.methods:
            arms = method_arms(m, self.spec)
            methods[m] = score_method(
                m, self.spec, chosen, [r for a in arms for r in self.spent(a)], self.seeds
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
        summary = {
            "study": self.spec.name,
            "spec": str(Path(self.spec_path).resolve()),
            "seeds": self.seeds,
            "wall_seconds": wall,
            "methods": methods,
            "mlflow": {
                "tracking_uri": self.state["tracking_uri"],
                "experiment_id": self.state["experiment_id"],
                "parent_run_id": self.state["parent_run_id"],
            },
        }
        if reference is not None:
            summary["reference"] = reference
        (self.out_dir / "study_summary.json").write_text(json.dumps(summary, indent=2))
        for m, s in methods.items():
            figure = curve_figure(m, s, reference, self.out_dir / "figures" / f"{m}.png")
            self.tracker.log_method(m, s, figure)
        return summary


def _read(out_dir: str) -> dict:
    return json.loads((Path(out_dir) / "result.json").read_text())


def summary_table(summary: dict) -> str:
    """The methods side by side: AURAC (log2, linear), compute and device-seconds."""
    from rankstudy.metrics import aurac

    several = len(summary["seeds"]) > 1
    lines = [
        f"{'method':<30}{'AURAC log2':>11}{'linear':>8}{'trials':>7}{'FLOPs':>10}{'device-s':>10}"
    ]
    for name, m in summary["methods"].items():
        spread = f" ±{m['aurac_log2_std']:.3f}" if several else ""
        lines.append(
            f"{name:<30}{m['aurac_log2']:>11.3f}{m['aurac_linear']:>8.3f}"
            f"{m['trials']:>7}{m['cost']['flops']:>10.2e}"
            f"{m['cost']['device_seconds']:>10.1f}{spread}"
        )
    if "reference" in summary:
        ranks = sorted(int(k) for k in summary["reference"])
        scores = [summary["reference"][str(r)] for r in ranks]
        lines.append(
            f"{'reference (planted, top-k)':<30}{aurac(ranks, scores):>11.3f}"
            f"{aurac(ranks, scores, 'linear'):>8.3f}"
        )
    return "\n".join(lines)
