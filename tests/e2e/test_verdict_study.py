"""A real tiny study with the svd rules and two seeds: per-example scores in every chosen
result, intervals consistent with the summary's own scores, lora_svd's known answers, and the
verdict printed and reproducible from the files."""

import json
from pathlib import Path

import pytest
import torch

from rankstudy.adapters import load_adapters, set_rank
from rankstudy.core.arms import parse_arm
from rankstudy.core.records import RESULT_FILE, RESULT_VERSION, read_result
from rankstudy.core.spec import load_spec
from rankstudy.core.verdict import study_verdict
from rankstudy.model.build import attach_arm, build_task, load_model
from rankstudy.model.engine import init_distributed
from rankstudy.study.state import StudyFiles
from rankstudy.study.summary import chosen_results, score_methods
from rankstudy.trial.checkpoint import latest_tag
from rankstudy.trial.evaluation import score_split
from studies import SERVED as METHODS
from studies import TINY


@pytest.fixture(scope="module")
def study(served_study) -> tuple[Path, Path]:
    return served_study


@pytest.mark.slow
def test_chosen_results_keep_every_test_example_of_every_rule(study):
    _, out = study
    tested = [read_result(p) for p in out.glob(f"trials/*/*/{RESULT_FILE}")]
    tested = [r for r in tested if r.scores_by_rule]
    assert tested and all(r.version == RESULT_VERSION >= 2 for r in tested)
    for r in tested:
        for split, n in (("test", TINY["task"]["test_size"]), ("validation", 32)):
            by_rule = r.examples[split]["score"]
            means = r.scores_by_rule if split == "test" else r.validation_scores_by_rule
            assert set(by_rule) == set(means)
            for rule, curve in by_rule.items():
                for k, values in curve.items():
                    assert len(values) == n
                    assert sum(values) / n == pytest.approx(means[rule][k], abs=1e-6)
    lora8 = [r for r in tested if r.arm == "lora_r8"]
    assert all(set(r.scores_by_rule) == {"scaled", "truncated", "svd"} for r in lora8)
    assert all(sorted(r.scores_by_rule["svd"]) == [1, 2, 4, 8] for r in lora8)
    assert all(sorted(r.scores_by_rule["truncated"]) == [1, 2, 4, 8] for r in lora8)
    assert all(sorted(r.scores_by_rule["scaled"]) == [8] for r in lora8)  # its own rank only


@pytest.mark.slow
def test_lora_svd_is_the_rank_R_arm_alone(study):
    _, out = study
    summary = json.loads((out / "study_summary.json").read_text())
    grid, svd = summary["methods"]["lora_grid"], summary["methods"]["lora_svd"]
    # one search trial per arm: the same lora_r8 trial serves both; at R the svd rule is the
    # whole update, the grid's rank-8 run itself
    assert svd["scores"][-1] == pytest.approx(grid["scores"][-1], abs=1e-6)
    assert svd["trials"] == 1 and grid["trials"] == 4
    assert svd["cost"]["flops"] < grid["cost"]["flops"] / 2


@pytest.mark.slow
def test_lora_truncated_is_the_rank_R_arm_cut_to_its_first_k_components(study):
    """The reference code's LoRA curve: the chosen lora_r8 trial, loaded from its checkpoint
    and scored here at each rank k with s_k x A[:k] B[:k], on the same test split."""
    spec_path, out = study
    spec = load_spec(str(spec_path), [])
    summary = json.loads((out / "study_summary.json").read_text())
    truncated = summary["methods"]["lora_truncated"]
    state = StudyFiles(spec, out, resume=True).state
    (test,) = [t for t in state.tests.values() if t.arm == "lora_r8" and t.seed == 0]
    assert "truncated" in test.rules
    arm = parse_arm("lora_r8", spec)
    loaded = load_model(spec.model, torch.float32)
    task = build_task(spec, loaded.model, loaded.tokenizer, arm, spec.seed)
    attach_arm(loaded.model, spec, arm)
    trial_dir = Path(test.out_dir)
    tag = latest_tag(trial_dir / "checkpoints")
    load_adapters(loaded.model, trial_dir / "checkpoints" / tag / "adapters.safetensors")
    init_distributed(False)
    by_hand = {}
    for k in truncated["ranks"]:
        set_rank(loaded.model, k, "scaled")
        by_hand[k] = score_split(loaded.model, task, "test", 64)["score"]
    seed0 = truncated["scores_by_seed"]["0"]
    assert seed0 == pytest.approx([by_hand[k] for k in truncated["ranks"]], abs=1e-6)
    # at its own rank it is the grid's rank-8 run; below, a cut of it, not the grid's runs
    assert seed0[-1] == pytest.approx(summary["methods"]["lora_grid"]["scores_by_seed"]["0"][-1])
    assert truncated["trials"] == 1


@pytest.mark.slow
def test_intervals_agree_with_the_summary_and_reproduce_from_the_files(study):
    spec_path, out = study
    summary = json.loads((out / "study_summary.json").read_text())
    verdict = summary["verdict"]  # the file's JSON
    intervals = verdict["intervals"]
    assert intervals["seeds"] == [0, 1] and "note" not in intervals
    assert intervals["examples"] == {"0": 32, "1": 32}
    for name, m in summary["methods"].items():
        i = intervals["methods"][name]["aurac_log2"]
        assert i["point"] == pytest.approx(m["aurac_log2"], abs=1e-5)
        assert i["low"] <= i["point"] <= i["high"]
        for r, s in zip(m["ranks"], m["scores"], strict=True):
            assert intervals["methods"][name]["scores"][str(r)]["point"] == pytest.approx(
                s, abs=1e-6
            )
    pairs = [(a, b) for a, bs in intervals["pairs"].items() for b in bs]
    assert len(pairs) == len(METHODS) * (len(METHODS) - 1) // 2
    assert verdict["recommendation"]["method"] in METHODS
    assert set(verdict["recommendation"]["per_method"]) == set(METHODS)

    spec = load_spec(str(spec_path), [])
    files = StudyFiles(spec, out, resume=True)
    chosen, missing = chosen_results(spec, files, [0, 1])
    methods, _, _ = score_methods(spec, files, chosen, missing, [0, 1], print)
    again = study_verdict(spec, methods, chosen, [0, 1], print)
    assert again.wire() == verdict  # the same seed, the same intervals


@pytest.mark.slow
def test_the_study_log_ends_with_the_verdict(study):
    _, out = study
    log = (out.parent / f"{out.name}.log").read_text()
    assert "AURAC log2 against the best (" in log and "paired 95% intervals" in log
    assert "deploy: " in log and "smallest rank tied with each method's best: " in log
    closing = log.split("AURAC log2 against the best")[1]
    assert "[" in closing and "(over seeds: ±" in closing  # two seeds: the seed spread too
