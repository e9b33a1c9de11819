"""The typed records: each written and read back unchanged by its one writer and reader, and
a result.json of another version (or cut short) refused with a message that says so."""

import json
import pickle

import pytest

from rankstudy.core.records import (
    RESULT_FILE,
    RESULT_VERSION,
    ResultError,
    TrialConfig,
    TrialFailure,
    TrialRecord,
    read_failure,
    read_result,
    write_failure,
    write_result,
)
from rankstudy.core.spec import SpecError, parse_spec
from rankstudy.core.tune_keys import as_overrides, reported, reported_in, sampled, tune_key
from rankstudy.study.state import STATE_FILE, StudyError, StudyFiles, StudyState, read_state
from report_store import make_result
from studies import TINY


def test_a_result_round_trips_through_its_file(tmp_path):
    result = make_result(
        scores={1: 0.25},
        scores_by_rule={"scaled": {1: 0.25}},
        extra_scores={"token_nll": {"scaled": {1: float("inf")}}},  # json writes Infinity
        validation_curve=[{"step": 1, "scores": {1: 0.5}}],
        reference={1: 0.75},
    )
    path = write_result(result, tmp_path / "t")
    assert (
        path == tmp_path / "t" / RESULT_FILE and not (tmp_path / "t" / "result.json.tmp").exists()
    )
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == RESULT_VERSION
    assert on_disk["scores"] == {"1": 0.25} and on_disk["reference"] == {"1": 0.75}
    assert "base_scores" not in on_disk  # absent, as a trial without one wrote it before
    assert read_result(path) == result


def test_a_result_of_another_version_or_cut_short_is_refused(tmp_path):
    path = tmp_path / RESULT_FILE
    on_disk = make_result().wire()
    path.write_text(json.dumps(on_disk | {"version": RESULT_VERSION + 1}))
    with pytest.raises(
        ResultError, match=rf"version {RESULT_VERSION + 1}.*reads versions \[1, 2, 3\]"
    ):
        read_result(path)
    path.write_text(json.dumps({k: v for k, v in on_disk.items() if k != "version"}))
    with pytest.raises(ResultError, match="version None"):
        read_result(path)
    path.write_text(json.dumps(on_disk)[:50])
    with pytest.raises(ResultError, match="cannot be read \\(cut short or corrupt"):
        read_result(path)
    path.write_text(json.dumps(on_disk | {"cost": {}}))
    with pytest.raises(ResultError, match="is not a trial result"):
        read_result(path)


def test_a_version_1_result_reads_as_one_without_per_example_scores(tmp_path):
    """Results written before per-example scores (version 1) still read: a study resumed
    across the change keeps them; it has no intervals for them."""
    path = tmp_path / RESULT_FILE
    old = {k: v for k, v in make_result().wire().items() if k != "examples"} | {"version": 1}
    path.write_text(json.dumps(old))
    result = read_result(path)
    assert result.version == 1 and result.examples == {}
    assert result.scores == make_result().scores


def test_a_trial_config_carries_its_spec_resolved_and_crosses_ray_pickled():
    config = TrialConfig.of(
        {"spec": TINY, "arm": "dylora", "out_dir": "/o", "overrides": ["seed=1"]}
    )
    assert config.spec == parse_spec(TINY, ["seed=1"]) and config.spec.seed == 1
    assert config.splits == ["validation", "test"] and config.score_base is False
    assert TrialConfig.of(config) is config
    assert pickle.loads(pickle.dumps(config)) == config  # as Ray carries it: no parse
    with pytest.raises(ValueError, match="arms"):  # a misspelt field is no silent default
        TrialConfig.of({"spec": TINY, "arms": "dylora", "arm": "dylora", "out_dir": "/o"})
    with pytest.raises(SpecError, match="seed"):  # a bad override, before any compute
        TrialConfig.of({"spec": TINY, "arm": "dylora", "out_dir": "/o", "overrides": ["seed=x"]})


def test_a_failure_record_is_versioned_and_an_older_failure_txt_still_reads(tmp_path):
    failure = TrialFailure(arm="lora_r1", reason="diverged at step 3")
    path = write_failure(failure, tmp_path / "t")
    assert json.loads(path.read_text()) == {
        "version": 1,
        "arm": "lora_r1",
        "reason": failure.reason,
    }
    assert read_failure(tmp_path / "t", "lora_r1") == failure
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "failure.txt").write_text("diverged, written by an older rankstudy")
    assert read_failure(tmp_path / "old", "dylora") == TrialFailure(
        arm="dylora", reason="diverged, written by an older rankstudy"
    )
    path.write_text(json.dumps({"version": 2, "arm": "lora_r1", "reason": "?"}))
    with pytest.raises(ResultError, match="version 2"):
        read_failure(tmp_path / "t", "lora_r1")


def test_the_study_state_keeps_its_records(tmp_path):
    spec = parse_spec(TINY)
    files = StudyFiles(spec, tmp_path, resume=False)
    search = TrialRecord(
        key="dylora/t0",
        arm="dylora",
        method="dylora",
        rank="1-8",
        trial=0,
        out_dir=str(tmp_path / "trials/dylora/t0"),
        params={"training.lr": 0.01},
        status="ok",
        failure=None,
        selection_metric=0.5,
        selection_by_rule={"scaled": 0.5},
    )
    test = search.model_copy(update={"rules": ["scaled"], "seed": 3})
    files.keep("dylora/t0", search)
    files.keep("dylora/t0/3", test)
    state = read_state(tmp_path / STATE_FILE)
    assert state.trials == {"dylora/t0": search} and state.tests == {"dylora/t0/3": test}
    assert not search.is_test and test.is_test
    resumed = StudyFiles(spec, tmp_path, resume=True)
    assert resumed.state == files.state
    (tmp_path / STATE_FILE).write_text(json.dumps({"trials": {"x": {"key": "x"}}, "tests": {}}))
    with pytest.raises(StudyError, match="--resume: .* is not a study state"):
        StudyFiles(spec, tmp_path, resume=True)
    assert StudyState().trials == {}


def test_a_failed_trial_selects_nothing_also_in_a_state_saved_with_the_searchers_value():
    saved = {
        "key": "dylora/t1",
        "arm": "dylora",
        "method": "dylora",
        "rank": "1-8",
        "trial": 1,
        "out_dir": "/s/trials/dylora/t1",
        "params": {"training.lr": 0.01},
        "status": "failed",
        "failure": "loss is NaN at step 3",
        "selection_metric": -1.0,  # what the searcher was told, kept in states saved before
    }
    assert TrialRecord.model_validate_json(json.dumps(saved)).selection_metric is None
    stopped = saved | {"status": "stopped", "failure": None, "selection_metric": 0.25}
    assert TrialRecord.model_validate(stopped).selection_metric == 0.25


def test_sampled_hyperparameters_keep_their_spec_paths_through_tune():
    suggestion = {"arm": "lora_r1", "phase": "search", tune_key("training.lr"): 0.01}
    assert suggestion == {"arm": "lora_r1", "phase": "search", "training__lr": 0.01}
    params = sampled(suggestion)
    assert params == {"training.lr": 0.01}
    report = reported(params) | {"selection_metric": 0.5, "out_dir": "/t"}
    assert report["param:training__lr"] == 0.01
    tune_result = report | {"config/training__lr": 0.01, "time_total_s": 1.0}
    carried = reported_in(tune_result)  # what a test pass carries of its chosen trial
    assert carried == {"param:training__lr": 0.01}
    assert sampled({"arm": "lora_r1", "phase": "test", **carried}) == params
    assert as_overrides(params) == ["training.lr=0.01"]
    assert as_overrides(sampled({"adapters__scale": "sqrt"})) == ['adapters.scale="sqrt"']
