"""The search's ASHA (rankstudy.study.arm_scheduler): Ray's scheduler decides within each arm only,
never stops a test pass, and its rungs survive a restore through the searcher's checkpoint;
the spec refuses what it cannot run, naming the field."""

from types import SimpleNamespace

import pytest

from rankstudy.core.spec import ParamRange, SchedulerSpec, SpecError, parse_spec
from rankstudy.core.trial_request import INTERIM, STEP, TrialRequest
from rankstudy.study.arm_scheduler import ArmASHA
from rankstudy.study.search import ArmSearch
from studies import TINY

CONTINUE, STOP = "CONTINUE", "STOP"
ASHA = SchedulerSpec(kind="asha", grace_period=10, reduction_factor=3)


def trial(trial_id: str, arm: str, phase: str = "search"):
    test = {"test_of": "/s/trials/a/x", "rules": ["scaled"], "seed": 0} if phase == "test" else {}
    request = TrialRequest(arm=arm, phase=phase, trial=0, **test)
    return SimpleNamespace(trial_id=trial_id, config=request.tune())


def at(step: int, value: float) -> dict:
    return {STEP: step, "selection_metric": value, INTERIM: True}


def scheduler_with(*trials) -> ArmASHA:
    asha = ArmASHA(["a", "b"], ASHA, max_t=40)
    for t in trials:
        asha.on_trial_add(None, t)
    return asha


def test_trials_are_compared_with_their_own_arms_only():
    a0, a1, b0, b1 = trial("a0", "a"), trial("a1", "a"), trial("b0", "b"), trial("b1", "b")
    asha = scheduler_with(a0, a1, b0, b1)
    assert asha.on_trial_result(None, a0, at(10, 0.9)) == CONTINUE  # first at its rung
    assert asha.on_trial_result(None, a1, at(10, 0.5)) == STOP  # below its arm's cutoff
    # arm b's trials all lie below arm a's: its first still goes on, and its better second
    assert asha.on_trial_result(None, b0, at(10, 0.3)) == CONTINUE
    assert asha.on_trial_result(None, b1, at(10, 0.4)) == CONTINUE
    # rungs are 10 and 30 steps (grace 10, factor 3, budget 40): no decision in between
    assert asha.on_trial_result(None, b0, at(20, 0.0)) == CONTINUE
    assert asha.on_trial_result(None, b0, at(30, 0.1)) == CONTINUE  # first at rung 30
    assert asha.on_trial_result(None, b1, at(30, 0.05)) == STOP


def test_a_test_pass_is_never_stopped_nor_scheduled():
    test = trial("t", "a", phase="test")
    asha = scheduler_with(trial("a0", "a"), test)
    asha.on_trial_result(None, trial("a0", "a"), at(10, 0.9))
    assert asha.on_trial_result(None, test, at(10, 0.0)) == CONTINUE
    asha.on_trial_complete(None, test, {"selection_metric": 0.0})  # no arm's bookkeeping
    assert all("t" not in arm._trial_info for arm in asha.arms.values())


def search(asha: ArmASHA) -> ArmSearch:
    space = {"training.lr": ParamRange(low=1e-4, high=1e-1, log=True)}
    return ArmSearch({"a": ["scaled"], "b": ["scaled"]}, space, 2, 0, [0], scheduler=asha)


def test_the_rungs_survive_a_restore_through_the_searchers_checkpoint(tmp_path):
    a0, a1 = trial("a0", "a"), trial("a1", "a")
    asha = scheduler_with(a0, a1)
    asha.on_trial_result(None, a0, at(10, 0.9))
    search(asha).save(tmp_path / "searcher.pkl")

    live = scheduler_with()  # the one Tune runs after a resume, made empty with the Tuner
    search(live).restore(tmp_path / "searcher.pkl")
    live.on_trial_add(None, a1)  # Tune adds the restored trials again
    assert live.on_trial_result(None, a1, at(10, 0.5)) == STOP  # a0's 0.9 was kept


def test_a_stopped_trial_ends_its_search_slot_but_is_never_chosen():
    searcher = search(None)
    ids = {}
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        ids.setdefault(config["arm"], []).append(f"t{i}")
    first, second = ids["a"]
    searcher.on_trial_complete(first, {"selection_metric": 0.9, "out_dir": "x0"} | at(10, 0.9))
    searcher.on_trial_complete(second, {"selection_metric": 0.2, "out_dir": "x1"})
    chosen = [c for c in searcher.queue if c["arm"] == "a"]
    assert [c["test_of"] for c in chosen] == ["x1"]  # the finished trial, though it scored less


def test_under_asha_an_arms_search_trials_run_one_after_another():
    """Two trials of one arm racing to a rung would make ASHA's choice depend on timing: under
    a scheduler the searcher holds an arm's next trial until its running one ends; without one
    it does not."""
    searcher = search(scheduler_with())
    first = [searcher.suggest("t0"), searcher.suggest("t1")]
    assert {c["arm"] for c in first} == {"a", "b"}
    assert searcher.suggest("t2") is None  # each arm has a trial running
    searcher.on_trial_complete("t0", {"selection_metric": 0.5, "out_dir": "x0"})
    assert searcher.suggest("t2")["arm"] == first[0]["arm"]
    free = search(None)
    assert [free.suggest(f"t{i}")["arm"] for i in range(3)].count("a") >= 1
    assert free.suggest("t3") is not None  # both arms' second trials, side by side


SPEC = TINY | {"search": {"trials_per_arm": 2, "scheduler": {"kind": "asha", "grace_period": 10}}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "search.scheduler: ASHA compares trials at their validations"),
        (["training.eval_every=10", "training.steps=null", "training.epochs=1"], "training.steps"),
        (["training.eval_every=10", "training.steps=10"], "search.scheduler.grace_period: 10"),
        (["training.eval_every=10", "resources.workers=2"], "resources.workers: 1"),
    ],
)
def test_the_spec_refuses_what_asha_cannot_run(overrides, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(SPEC, overrides)


def test_asha_is_off_unless_asked():
    assert parse_spec(TINY).search.scheduler is None
    spec = parse_spec(SPEC, ["training.eval_every=10"])
    assert spec.search.scheduler.reduction_factor == 3
