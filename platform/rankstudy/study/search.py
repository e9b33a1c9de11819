"""One Tune searcher for a whole study: a seeded OptunaSearch per arm, then each arm's test
passes, behind a single Tuner.

Every arm gets exactly trials_per_arm suggestions from its own Optuna study with the same seed
and space (same budget, same search). When all of an arm's trials have ended, the searcher
chooses the arm's best trial per inference rule on validation (never looking at test) and
queues its test pass and its repeats at the other seeds as further trials. So the whole study
shares one Tuner: trials of different arms and test passes run side by side, and warm trial
actors are reused throughout instead of paying process start-up and imports again. With a
storage, every arm's Optuna study is kept there (rankstudy.study.optuna_storage), where
optuna-dashboard and the report read it.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from rankstudy.core.spec import ParamRange
from rankstudy.core.trial_request import Selection, TrialReport, TrialRequest
from rankstudy.core.tune_keys import sampled, tune_key
from rankstudy.study.optuna_storage import fail_lost, fresh_search

if TYPE_CHECKING:
    from rankstudy.study.arm_scheduler import ArmASHA


def optuna_space(space: dict[str, ParamRange]) -> dict:
    """Optuna distributions keyed for Tune (rankstudy.core.tune_keys)."""
    out = {}
    for key, r in space.items():
        out[tune_key(key)] = (
            optuna.distributions.CategoricalDistribution(r.choices)
            if r.choices is not None
            else optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)
        )
    return out


def upper_bound(arms: dict[str, list[str]], trials_per_arm: int, seeds: int) -> int:
    """Tune's num_samples: every search trial plus at most one test pass per rule and seed."""
    return sum(trials_per_arm + len(rules) * seeds for rules in arms.values())


@dataclass(frozen=True, eq=False)  # eq=False: hashed as itself, a key of `choose`
class Candidate:
    """A search trial that ended well, as the choice of an arm's tested trials reads it: the
    searcher's from Tune's result, the study's count of test passes from its record."""

    index: int  # its suggestion's number within the arm
    out_dir: str
    params: dict[str, Any]  # its sampled hyperparameters, by spec path
    selection: Selection

    @classmethod
    def of_tune(cls, index: int, result: Mapping[str, Any]) -> Candidate:
        report = TrialReport.of_tune(result)
        return cls(index, report.out_dir, report.params, report.selection)


def choose(ok: list[Candidate], rules: list[str]) -> dict[Candidate, list[str]]:
    """Each rule's best trial on validation: the trial -> the rules it was chosen for. Ties go
    to the earlier suggestion, so the choice never depends on finishing order."""
    chosen: dict[str, tuple[Candidate, list[str]]] = {}
    for rule in rules if ok else []:
        best = max(ok, key=lambda c: (c.selection.by_rule.get(rule, c.selection.metric), -c.index))
        chosen.setdefault(best.out_dir, (best, []))[1].append(rule)
    return dict(chosen.values())


class ArmSearch(Searcher):
    """arms: arm -> the inference rules its methods are served with. weights: an arm's
    relative step cost (its method's forwards per step), for ordering only: costly arms go
    first in each round (longest processing time first), so that long trials, and the test
    passes that wait for an arm's last trial, do not run alone at the end while the other
    slots idle. Once an arm has finished a trial, its measured duration replaces the guess.
    scheduler: the study's ASHA (rankstudy.study.arm_scheduler), whose rungs this searcher's
    checkpoints carry; a trial it stopped has ended (it counts toward trials_per_arm) but is
    never chosen. Under it an arm's search trials run one after another (arms still run side
    by side): ASHA decides on the results its rungs hold when a trial reaches them, so two
    trials of one arm racing to a rung would make the choice depend on timing, and a study
    and its resume could choose differently.

    storage: an Optuna RDB storage URL (rankstudy.study.optuna_storage.storage_url), None for
    memory; study: the study's name, which names its Optuna studies. They are opened at the
    first suggestion (open_searches), so a searcher Tune restores keeps its own, reattached
    to the storage by the pickle it was saved in."""

    def __init__(
        self,
        arms: dict[str, list[str]],
        space: dict[str, ParamRange],
        trials_per_arm: int,
        seed: int,
        seeds: list[int],
        weights: dict[str, float] | None = None,
        metric: str = "selection_metric",
        mode: str = "max",
        scheduler: ArmASHA | None = None,
        storage: str | None = None,
        study: str = "study",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.scheduler = scheduler
        self.space = optuna_space(space)
        self.seed = seed
        self.storage = storage
        self.study = study
        self.rules = arms
        self.seeds = seeds
        self.trials_per_arm = trials_per_arm
        self.searchers: dict[str, OptunaSearch | None] | None = None  # open_searches
        self.suggested = {arm: 0 for arm in arms}
        self.weight = {arm: (weights or {}).get(arm, 1) for arm in arms}
        self.seconds: dict[str, float] = {}  # measured duration of an arm's search trial
        self.owner: dict[str, tuple[str, str, int]] = {}  # trial id -> (arm, phase, index)
        self.ended: dict[str, list[dict]] = {arm: [] for arm in arms}
        self.queue: list[dict] = []
        self.running: set[str] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space and metric were fixed at construction

    def suggest(self, trial_id: str):
        if self.queue:
            config = self.queue.pop(0)
            self.owner[trial_id] = (config["arm"], "test", -1)
        else:
            open_arms = [a for a, n in self.suggested.items() if n < self.trials_per_arm]
            if not open_arms:
                return None if self.running else Searcher.FINISHED
            if self.scheduler is not None:  # one search trial of an arm at a time
                busy = {self.owner[t][0] for t in self.running if self.owner[t][1] == "search"}
                open_arms = [a for a in open_arms if a not in busy]
                if not open_arms:
                    return None  # asked again when a trial ends
            arm = min(open_arms, key=lambda a: (self.suggested[a], -self.expected_cost(a)))
            self.owner[trial_id] = (arm, "search", self.suggested[arm])
            self.suggested[arm] += 1
            if self.searchers is None:
                self.searchers = self.open_searches()
            searcher = self.searchers[arm]
            config = TrialRequest(
                arm=arm,
                phase="search",
                trial=self.suggested[arm] - 1,  # its number within the arm, for the records
                params=sampled(searcher.suggest(trial_id)) if searcher else {},
            ).tune()
        self.running.add(trial_id)
        return config

    def open_searches(self) -> dict[str, OptunaSearch | None]:
        """Each arm's OptunaSearch, on a fresh Optuna study in the storage (fresh_search); None
        for every arm when the space is empty (nothing to search)."""
        if not self.space:
            return {arm: None for arm in self.rules}
        storage = optuna.storages.RDBStorage(self.storage) if self.storage else None

        def searcher(name: str) -> OptunaSearch:
            return OptunaSearch(
                space=self.space,
                metric=self.metric,
                mode=self.mode,
                seed=self.seed,
                study_name=name,
                storage=storage,
            )

        return {
            arm: fresh_search(storage, self.study, arm, self.seed, searcher) for arm in self.rules
        }

    def expected_cost(self, arm: str) -> float:
        """The arm's measured trial seconds, else its weight times the cheapest measured."""
        if arm in self.seconds:
            return self.seconds[arm]
        unit = min(self.seconds.values(), default=1.0)
        return self.weight[arm] * unit

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the selection metric exists only at the end of a trial

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.running.discard(trial_id)
        arm, phase, index = self.owner[trial_id]
        if phase != "search":
            return
        if self.searchers[arm] is not None:
            self.searchers[arm].on_trial_complete(trial_id, result, error)
        report = None if result is None or error else TrialReport.of_tune(result)
        # not failed, and its last report not a validation (the scheduler stopped it there)
        ok = report is not None and not report.failed and not report.interim
        if ok and "time_total_s" in result:
            self.seconds[arm] = max(self.seconds.get(arm, 0.0), result["time_total_s"])
        self.ended[arm].append({"index": index, "ok": ok, **(result or {})})
        if len(self.ended[arm]) == self.trials_per_arm:
            self.queue_tests(arm)

    def queue_tests(self, arm: str) -> None:
        """Queue a test pass per seed for each trial the arm's rules chose (`choose`)."""
        ok = [Candidate.of_tune(r["index"], r) for r in self.ended[arm] if r["ok"]]
        for best, rules in choose(ok, self.rules[arm]).items():  # none: the arm failed
            for i, seed in enumerate(self.seeds):
                request = TrialRequest(
                    arm=arm,
                    phase="test",
                    trial=best.index,
                    params=best.params,
                    test_of=best.out_dir,
                    rules=rules,
                    seed=seed,
                    first_seed=i == 0,
                )
                self.queue.append(request.tune())

    def save(self, checkpoint_path: str) -> None:
        rungs = self.scheduler.state() if self.scheduler is not None else None
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__ | {"scheduler": rungs}, f)

    def restore(self, checkpoint_path: str) -> None:
        """This searcher's state, and the rungs into the scheduler Tune runs (the one
        unpickled with this searcher from the Tuner's own state). Its Optuna studies go on in
        the storage, less the trials asked for after this state was saved (fail_lost)."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        rungs = state.pop("scheduler")
        self.__dict__.update(state)
        for searcher in (self.searchers or {}).values():
            if searcher is not None:
                fail_lost(searcher)
        if self.scheduler is not None and rungs is not None:
            self.scheduler.restore(rungs)
