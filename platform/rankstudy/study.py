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
    """Tune's sampled values (keys with '__' for '.') as spec overrides."""
    return [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in config.items() if "__" in k]


def tune_trial(config: dict) -> None:
    """The Tune trainable: train one arm with the sampled hyperparameters, validate, report."""
    from rankstudy.trial import TrialFailed

    trial_id = tune.get_context().get_trial_id()
    out_dir = Path(config["study_dir"]) / "trials" / config["arm"] / trial_id
    trial_config = {
        "spec": config["spec"],
        "arm": config["arm"],
        "out_dir": str(out_dir),
        "overrides": [*config["overrides"], *search_overrides(config)],
        "splits": ["validation"],
    }
    try:
        result = execute(trial_config, str(Path(config["study_dir"]) / "ray"))
    except TrialFailed as e:  # deterministic: report it instead of retrying it
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "failure.txt").write_text(str(e))
        tune.report({"selection_metric": FAILED_METRIC, "failed": True, "out_dir": str(out_dir)})
        return
    tune.report(
        {
            "selection_metric": result["selection_metric"],
            "failed": False,
            "out_dir": str(out_dir),
            **{f"selection_{r}": v for r, v in result["selection_metric_by_rule"].items()},
        }
    )


def trial_resources(spec: StudySpec) -> dict:
    r = spec.resources
    if r.workers > 1:  # the function only drives a TorchTrainer, whose workers hold the devices
        return {"CPU": 1}
    return {"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})}


class _Recorder(tune.Callback):
    """Logs each trial to MLflow as it ends, from the driver, and prints a progress line."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.done = 0

    def _ended(self, trial, error: str | None) -> None:
        self.done += 1
        record = self.study.record(trial.config, trial.last_result or {}, error)
        total = len(study_arms(self.study.spec)) * self.study.spec.search.trials_per_arm
        self.study.log(
            f"trial {self.done}/{total} {record['key']}: {record['status']}, "
            f"selection {record['selection_metric']:.4f} {record['params']}"
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
        self.state = json.loads(self.state_path.read_text()) if resume else {"trials": {}}
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
            chosen = self.score_chosen()
        except BaseException:
            self.tracker.client.set_terminated(parent, "KILLED")
            raise
        summary = self.summarise(chosen, time.perf_counter() - start)
        self.tracker.finish_study(summary)
        return summary

    def search(self) -> None:
        """Every arm's trials under one Tuner; resumes the Tuner after a kill."""
        from rankstudy.search import ArmSearch

        s = self.spec.search
        arms = study_arms(self.spec)
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
                    search_alg=ArmSearch(arms, s.space, s.trials_per_arm, s.seed),
                    num_samples=len(arms) * s.trials_per_arm,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name="search",
                    storage_path=str(self.out_dir / "tune"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=2),
                    callbacks=[_Recorder(self)],
                ),
            )
        for result in tuner.fit():  # trials that ended before a resume are recorded here
            self.record(
                result.config,
                result.metrics or {},
                None if result.error is None else f"{type(result.error).__name__}: {result.error}",
                quiet=True,
            )

    def record(self, config: dict, metrics: dict, error: str | None, quiet: bool = False) -> dict:
        """A trial as the study keeps it, logged to MLflow once."""
        arm = config["arm"]
        params = {k.replace("__", "."): v for k, v in config.items() if "__" in k}
        out_dir = Path(
            metrics.get("out_dir")
            or Path(config["study_dir"]) / "trials" / arm / metrics.get("trial_id", "x")
        )
        key = f"{arm}/{out_dir.name}"
        if key in self.state["trials"]:
            return self.state["trials"][key]
        failure = error
        if failure is None and metrics.get("failed"):
            failure = (out_dir / "failure.txt").read_text()
        result = None if failure else json.loads((out_dir / "result.json").read_text())
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
            "selection": {
                k.removeprefix("selection_"): v
                for k, v in metrics.items()
                if k.startswith("selection_") and k != "selection_metric"
            },
        }
        self.state["trials"][key] = record
        self.save_state()
        return record

    def score_chosen(self) -> dict:
        """Choose each (arm, rule) on validation; score the chosen trial on test, and train and
        score it again for every other seed. Runs as Ray tasks, side by side."""
        import ray

        remote = ray.remote(execute).options(
            **{
                "num_cpus": trial_resources(self.spec).get("CPU", 1),
                "num_gpus": trial_resources(self.spec).get("GPU", 0),
            }
        )
        storage = str(self.out_dir / "ray")
        jobs, chosen = {}, {}
        for m in self.spec.methods:
            _, rule = METHOD_ARMS[m]
            for arm in method_arms(m, self.spec):
                if (arm, rule) in chosen:
                    continue
                ok = [
                    t
                    for t in self.state["trials"].values()
                    if t["arm"] == arm and t["status"] == "ok"
                ]
                if not ok:
                    raise StudyError(
                        f"arm {arm}: every trial failed; see {self.out_dir / 'trials' / arm}"
                    )
                best = max(ok, key=lambda t: t["selection"].get(rule, t["selection_metric"]))
                self.log(
                    f"{arm} [{rule}]: chose {best['key']} {best['params']} "
                    f"(validation {best['selection'].get(rule, best['selection_metric']):.4f})"
                )
                chosen[(arm, rule)] = {}
                overrides = [
                    *self.overrides,
                    *[f"{k}={json.dumps(v)}" for k, v in best["params"].items()],
                ]
                for i, seed in enumerate(self.seeds):
                    out = best["out_dir"] if i == 0 else f"{best['out_dir']}-seed{seed}"
                    chosen[(arm, rule)][seed] = out
                    if out in jobs or _has_test(out):
                        continue
                    config = {
                        "spec": self.raw,
                        "arm": arm,
                        "out_dir": out,
                        "overrides": overrides if i == 0 else [*overrides, f"seed={seed}"],
                        "splits": ["test"] if i == 0 else ["validation", "test"],
                    }
                    jobs[out] = (arm, best["params"], remote.remote(config, storage))
        for out, (arm, params, ref) in jobs.items():
            result = ray.get(ref)
            self.tracker.log_trial(f"{arm}/{Path(out).name}", arm, result["method"], params, result)
        return {k: {s: _read(d) for s, d in by_seed.items()} for k, by_seed in chosen.items()}

    # -- the summary ---------------------------------------------------------------------------
    def spent(self, arm: str) -> list[dict]:
        """Every result this arm spent compute on: search trials, test passes, seed repeats."""
        dirs = {
            t["out_dir"]
            for t in self.state["trials"].values()
            if t["arm"] == arm and t["status"] == "ok"
        }
        dirs |= {str(p) for p in (self.out_dir / "trials" / arm).glob("*-seed*")}
        return [_read(d) for d in sorted(dirs)]

    def summarise(self, chosen: dict, wall: float) -> dict:
        methods = {}
        for m in self.spec.methods:
            arms = method_arms(m, self.spec)
            methods[m] = score_method(
                m, self.spec, chosen, [r for a in arms for r in self.spent(a)], self.seeds
            )
            methods[m]["trials"] = sum(1 for t in self.state["trials"].values() if t["arm"] in arms)
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
            self.tracker.log_method(m, s, None)
        return summary


def _read(out_dir: str) -> dict:
    return json.loads((Path(out_dir) / "result.json").read_text())


def _has_test(out_dir: str) -> bool:
    path = Path(out_dir) / "result.json"
    return path.is_file() and bool(json.loads(path.read_text())["scores"])


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
