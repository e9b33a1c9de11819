"""Ray Tune's ASHA, one per arm, behind the study's single Tuner.

A study runs every arm's trials in one Tuner, and one ASHAScheduler there would compare trials
across arms: a strong arm's trials would stop a weaker arm's, which the search must never do
(every arm gets the same search). `ArmASHA` routes each search trial to its own arm's
AsyncHyperBandScheduler and delegates every call to it, so the halving is Ray's own, decided
per arm; test passes are routed to none and always continue.

Tune saves a searcher's state with every experiment checkpoint but never a scheduler's, so
the rungs ride in rankstudy.study.search.ArmSearch's checkpoint (`state`, `restore`): a resumed
study stops trials as the killed one would have.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from rankstudy.core.spec import SchedulerSpec
from rankstudy.core.trial_request import STEP, TrialRequest


class ArmASHA(FIFOScheduler):
    """arms: the study's arms; max_t: the training budget in optimizer steps. Trials are
    compared on `metric` (the arm's validation selection metric, higher is better) at each
    rung, the first validation at or past grace_period x reduction_factor^k steps."""

    def __init__(
        self, arms: list[str], asha: SchedulerSpec, max_t: int, metric: str = "selection_metric"
    ) -> None:
        super().__init__()
        self._metric, self._mode = metric, "max"  # what Tune checks reports against
        self.arms = {
            arm: ASHAScheduler(
                time_attr=STEP,
                metric=metric,
                mode="max",
                max_t=max_t,
                grace_period=asha.grace_period,
                reduction_factor=asha.reduction_factor,
            )
            for arm in arms
        }

    def _of(self, trial) -> ASHAScheduler | None:
        """The arm's scheduler of a search trial; None for a test pass."""
        request = TrialRequest.of_tune(trial.config)
        return None if request.is_test else self.arms[request.arm]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # fixed at construction, like the searcher's

    def on_trial_add(self, tune_controller, trial) -> None:
        if (asha := self._of(trial)) is not None:
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        asha = self._of(trial)
        if asha is None:
            return TrialScheduler.CONTINUE
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if (asha := self._of(trial)) is not None:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        if (asha := self._of(trial)) is not None:
            asha.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if (asha := self._of(trial)) is not None:
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{arm}: {asha.debug_string()}" for arm, asha in self.arms.items())

    def state(self) -> dict:
        """What a restore needs: every arm's scheduler with its rungs."""
        return self.arms

    def restore(self, state: dict) -> None:
        self.arms = state
