"""The headline numbers: a method's test curve, AURAC (mean and spread over seeds) and total cost,
from chosen results built here, checked against sums worked out by hand."""

import pytest

from rankstudy.core.scoring import score_method, total_cost
from rankstudy.core.spec import parse_spec
from report_store import make_result

SPEC = parse_spec(
    {
        "name": "scored",
        "model": {"tiny": {}},
        "adapters": {"max_rank": 4, "train_ranks": [1, 2, 4]},
        "training": {"steps": 1},
        "methods": ["lora_grid", "matryoshka_truncated_p"],
        "price_per_device_hour": 2.0,
    }
)


def result(curves: dict[str, dict[int, float]], nll: dict[str, dict[int, float]] | None = None):
    """A test pass's result: rule -> rank -> score, and the extra metric's the same way."""
    extra = {} if nll is None else {"token_nll": nll}
    return make_result(metric="token_accuracy", scores_by_rule=curves, extra_scores=extra)


def cost(device_seconds: float, flops: float):
    """A spent trial's result, as far as its cost goes."""
    return make_result(
        cost={
            "device_seconds": device_seconds,
            "train_seconds": device_seconds * 0.75,
            "eval_seconds": device_seconds * 0.25,
            "flops": flops,
            "train_tokens": 1000,
        }
    )


def test_the_lora_grid_curve_is_each_arm_at_its_own_rank_and_aurac_is_averaged_over_seeds():
    # each arm's result also scores other ranks (lora_truncations): only its own rank counts
    chosen = {
        ("lora_r1", "scaled"): {0: result({"scaled": {1: 0.5}}), 1: result({"scaled": {1: 0.7}})},
        ("lora_r2", "scaled"): {
            0: result({"scaled": {1: 0.0, 2: 0.6}}),
            1: result({"scaled": {1: 0.0, 2: 0.6}}),
        },
        ("lora_r4", "scaled"): {
            0: result({"scaled": {2: 0.0, 4: 0.9}}),
            1: result({"scaled": {2: 0.0, 4: 0.5}}),
        },
    }
    spent = [cost(100, 1e12), cost(50, 2e12), cost(10, 5e11)]
    m = score_method("lora_grid", SPEC, chosen, spent, [0, 1], search_trials=3)
    assert m.ranks == [1, 2, 4]
    assert m.scores_by_seed == {"0": [0.5, 0.6, 0.9], "1": [0.7, 0.6, 0.5]}
    assert m.scores == pytest.approx([0.6, 0.6, 0.7])
    # log2 axis x = 0, 1, 2: seed 0 ((0.5+0.6)/2 + (0.6+0.9)/2) / 2 = 0.65, seed 1 0.60
    assert m.aurac_log2 == pytest.approx(0.625)
    assert m.aurac_log2_std == pytest.approx(0.025)
    # linear axis x = 1, 2, 4: seed 0 (1 x 0.55 + 2 x 0.75) / 3, seed 1 (1 x 0.65 + 2 x 0.55) / 3
    assert m.aurac_linear == pytest.approx((2.05 / 3 + 1.75 / 3) / 2)
    assert m.aurac_linear_std == pytest.approx((2.05 / 3 - 1.75 / 3) / 2)
    assert m.cost.wire() == pytest.approx(
        {
            "trials": 3,
            "device_seconds": 160,
            "train_seconds": 120,
            "eval_seconds": 40,
            "flops": 3.5e12,
            "train_flops": 0.0,
            "train_tokens": 3000,
            "device_hours": 160 / 3600,
            "money": 2.0 * 160 / 3600,
        }
    )
    assert m.search_trials == 3 and m.inference_rule == "scaled"


def test_a_one_run_method_reads_its_own_rule_and_its_extra_metrics():
    scaled = {1: 0.9, 2: 0.9, 4: 0.9}  # the same run served the other way: must not be read
    chosen = {
        ("matryoshka", "truncated_p"): {
            0: result(
                {"scaled": scaled, "truncated_p": {1: 0.4, 2: 0.4, 4: 0.4}},
                {"scaled": scaled, "truncated_p": {1: 2.0, 2: 1.5, 4: 1.0}},
            ),
            1: result(
                {"scaled": scaled, "truncated_p": {1: 0.2, 2: 0.4, 4: 0.4}},
                {"scaled": scaled, "truncated_p": {1: 1.0, 2: 0.5, 4: 0.0}},
            ),
        }
    }
    m = score_method(
        "matryoshka_truncated_p", SPEC, chosen, [cost(30, 1e11)] * 2, [0, 1], search_trials=1
    )
    assert m.inference_rule == "truncated_p" and m.metric == "token_accuracy"
    assert m.scores == pytest.approx([0.3, 0.4, 0.4])
    # seed 0 is flat at 0.4; seed 1 on log2: ((0.2+0.4)/2 + 0.4) / 2 = 0.35
    assert m.aurac_log2 == pytest.approx(0.375) and m.aurac_log2_std == pytest.approx(0.025)
    # seed 1 on the linear axis: (1 x 0.3 + 2 x 0.4) / 3
    assert m.aurac_linear == pytest.approx((0.4 + 1.1 / 3) / 2)
    assert m.extra_scores == {"token_nll": pytest.approx([1.5, 1.0, 0.5])}
    assert m.cost.paid_runs == 2 and m.cost.flops == 2e11


def test_a_method_is_charged_only_its_own_rules_scoring():
    """One lora_r4 trial scored under scaled (the grid's) and svd (lora_svd's): each method's
    cost is the trial's less what scoring the other rule spent (seconds and FLOPs)."""
    spec = SPEC.model_copy(update={"methods": ["lora_grid", "lora_svd"]})
    shared = make_result(
        cost={
            "device_seconds": 100.0,
            "eval_seconds": 30.0,
            "flops": 1e12,
            "train_flops": 6e11,
            "devices": 2,
            "eval_by_rule": {
                "scaled": {"seconds": 5.0, "tokens": 10, "flops": 1e11},
                "svd": {"seconds": 20.0, "tokens": 30, "flops": 2.5e11},
            },
        }
    )
    chosen = {("lora_r4", "svd"): {0: result({"svd": {1: 0.2, 2: 0.4, 4: 0.5}})}}
    svd = score_method("lora_svd", spec, chosen, [shared], [0], search_trials=3).cost
    assert svd.device_seconds == 100 - 5 * 2 and svd.eval_seconds == 25
    assert svd.flops == 1e12 - 1e11 and svd.train_flops == 6e11
    grid = total_cost([shared], None, "scaled")
    assert grid.device_seconds == 100 - 20 * 2 and grid.flops == 1e12 - 2.5e11
    assert total_cost([shared], None).flops == 1e12  # no rule: everything


def test_one_seed_has_no_spread():
    chosen = {("matryoshka", "truncated_p"): {3: result({"truncated_p": {1: 0.1, 2: 0.2, 4: 0.4}})}}
    m = score_method("matryoshka_truncated_p", SPEC, chosen, [cost(1, 1)], [3], search_trials=1)
    assert m.scores_by_seed == {"3": [0.1, 0.2, 0.4]}
    assert m.aurac_log2 == pytest.approx(((0.1 + 0.2) / 2 + (0.2 + 0.4) / 2) / 2)
    assert m.aurac_log2_std == 0 and m.extra_scores == {}
