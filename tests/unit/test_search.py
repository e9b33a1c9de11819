"""The study's searcher without Ray: every arm gets the same number of suggestions, costly arms
go first (by weight, then by measured duration), and each arm's best trial per inference rule
is queued for its test pass once all of the arm's trials have ended."""

from ray.tune.search import Searcher

from rankstudy.core.spec import ParamRange
from rankstudy.core.trial_request import Selection
from rankstudy.study.search import ArmSearch, Candidate, choose

SPACE = {"training.lr": ParamRange(low=1e-4, high=1e-2, log=True)}
ARMS = {
    "lora_r1": ["scaled"],
    "lora_r2": ["scaled"],
    "nested_multiloss": ["scaled"],
    "matryoshka": ["scaled", "truncated_p"],
}


def test_round_one_by_weight_round_two_by_measured_seconds():
    weights = {"nested_multiloss": 4}  # its forwards per step (|S|); every other arm's: 1
    search = ArmSearch(ARMS, SPACE, trials_per_arm=2, seed=0, seeds=[0], weights=weights)
    first = [search.suggest(f"t{i}")["arm"] for i in range(4)]
    assert first[0] == "nested_multiloss"  # the heaviest: first in its round
    assert sorted(first) == sorted(ARMS)
    seconds = {"lora_r1": 5.0, "lora_r2": 30.0, "nested_multiloss": 10.0, "matryoshka": 20.0}
    for i, arm in enumerate(first):
        result = {"selection_metric": 0.5, "time_total_s": seconds[arm], "out_dir": f"/t/{i}"}
        search.on_trial_complete(f"t{i}", result)
    second = [search.suggest(f"u{i}")["arm"] for i in range(4)]
    assert second == ["lora_r2", "matryoshka", "nested_multiloss", "lora_r1"]


def test_each_arm_gets_its_trials_then_its_test_passes():
    search = ArmSearch({"matryoshka": ["scaled", "truncated_p"]}, SPACE, 3, seed=0, seeds=[0, 1])
    configs = [search.suggest(f"t{i}") for i in range(3)]
    assert all(c["phase"] == "search" and 1e-4 <= c["training__lr"] <= 1e-2 for c in configs)
    assert search.suggest("extra") is None  # budget spent, trials still running
    scores = [(0.6, 0.9), (0.8, 0.7), (0.8, 0.5)]  # (scaled, truncated_p) on validation
    for i, (scaled, truncated) in enumerate(scores):
        search.on_trial_complete(
            f"t{i}",
            {
                "selection_metric": scaled,
                "selection_scaled": scaled,
                "selection_truncated_p": truncated,
                "out_dir": f"/trials/{i}",
                "param:training__lr": configs[i]["training__lr"],
                "config/training__lr": configs[i]["training__lr"],  # as Tune flattens it
            },
        )
    tests = [search.suggest(f"x{i}") for i in range(4)]
    # scaled: trials 1 and 2 tie, the earlier suggestion wins; truncated_p: trial 0
    assert [(t["test_of"], t["rules"], t["seed"], t["first_seed"]) for t in tests] == [
        ("/trials/1", ["scaled"], 0, True),
        ("/trials/1", ["scaled"], 1, False),
        ("/trials/0", ["truncated_p"], 0, True),
        ("/trials/0", ["truncated_p"], 1, False),
    ]
    assert tests[0]["param:training__lr"] == configs[1]["training__lr"]
    carried = [k for k in tests[0] if "training" in k]
    assert carried == ["param:training__lr"]  # only what the trial reported, not its config
    for i in range(4):
        search.on_trial_complete(f"x{i}", {"selection_metric": 0.0})
    assert search.suggest("done") == Searcher.FINISHED


def test_same_seed_same_suggestions_for_every_arm():
    search = ArmSearch({"lora_r1": ["scaled"], "dylora": ["scaled"]}, SPACE, 2, seed=7, seeds=[0])
    by_arm = {}
    for i in range(4):
        c = search.suggest(f"t{i}")
        by_arm.setdefault(c["arm"], []).append(c["training__lr"])
    assert len(set(by_arm["lora_r1"])) == 2
    assert by_arm["lora_r1"] == by_arm["dylora"]


def test_each_rule_chooses_its_best_trial_and_a_tie_the_earlier_suggestion():
    def trial(index: int, metric: float, **by_rule: float) -> Candidate:
        return Candidate(
            index, f"/s/t{index}", {"training.lr": index}, Selection(metric=metric, by_rule=by_rule)
        )

    late, early = trial(1, 0.6, truncated_p=0.5), trial(0, 0.6, truncated_p=0.4)
    other = trial(2, 0.5, truncated_p=0.7)
    chosen = choose([late, early, other], ["scaled", "truncated_p", "svd"])
    # scaled: a tie at 0.6, the earlier suggestion; truncated_p: its own selection; svd: none
    # recorded for it, so the trial's own rule's
    assert chosen == {early: ["scaled", "svd"], other: ["truncated_p"]}
    assert choose([], ["scaled"]) == {}  # an arm whose trials all failed tests none
