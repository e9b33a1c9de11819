"""One Tune searcher for all arms: a seeded OptunaSearch per arm behind a single Tuner.

Every arm gets exactly trials_per_arm suggestions from its own Optuna study with the same
seed and space (same budget, same search), and all arms' trials share one Tuner: the cluster
runs trials of different arms side by side, and warm trial actors are reused across arms
instead of paying process start-up and imports for every trial.
"""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from rankstudy.spec import ParamRange


def optuna_space(space: dict[str, ParamRange]) -> dict:
    """Optuna distributions keyed for Tune ('.' in spec paths becomes '__')."""
    import optuna

    out = {}
    for key, r in space.items():
        out[key.replace(".", "__")] = (
            optuna.distributions.CategoricalDistribution(r.choices)
            if r.choices is not None
            else optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)
        )
    return out


class ArmSearch(Searcher):
    def __init__(
        self,
        arms: list[str],
        space: dict[str, ParamRange],
        trials_per_arm: int,
        seed: int,
        metric: str = "selection_metric",
        mode: str = "max",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        dists = optuna_space(space)
        self.searchers = {
            arm: OptunaSearch(space=dists, metric=metric, mode=mode, seed=seed) if dists else None
            for arm in arms
        }
        self.suggested = {arm: 0 for arm in arms}
        self.trials_per_arm = trials_per_arm
        self.owner: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space and metric were fixed at construction

    def suggest(self, trial_id: str):
        open_arms = [a for a, n in self.suggested.items() if n < self.trials_per_arm]
        if not open_arms:
            return Searcher.FINISHED
        arm = min(open_arms, key=lambda a: self.suggested[a])  # round robin, in arm order
        self.suggested[arm] += 1
        self.owner[trial_id] = arm
        searcher = self.searchers[arm]
        return {"arm": arm, **(searcher.suggest(trial_id) if searcher else {})}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the selection metric exists only at the end of a trial

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        searcher = self.searchers[self.owner[trial_id]]
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
