"""The typed summaries: files written before them read and write back unchanged, and a method
summary goes to MLflow and comes back equal (rankstudy.core.method_codec)."""

import json
import statistics
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rankstudy.core import mlflow_names as names
from rankstudy.core.method_codec import from_mlflow, missing_from_tags, point_from_mlflow
from rankstudy.core.scoring import score_method
from rankstudy.core.spec import parse_spec
from rankstudy.core.summaries import (
    PointEntry,
    SummaryError,
    read_study_summary,
    read_sweep_summaries,
    sweep_body,
    write_study_summary,
    write_sweep_summaries,
)
from rankstudy.core.verdict import study_verdict
from rankstudy.tracking.tracker import StudyTracker
from report_store import make_result, make_study_summary, make_summary

FIXTURES = Path(__file__).parents[1] / "fixtures"
# study_summary.json as the dicts before the typed records wrote them: a real study's (two
# seeds, a verdict, its report and registered model) and one with a failed arm, as logged to
# MLflow before the report was built (no report or registered keys)
BEFORE = ["study_summary-before-typed.json", "study_summary-failed-arm-before-typed.json"]
# verdict_summary's study_summary.json as the verdict's dicts wrote it: one seed, so its note
VERDICT_BEFORE = "study_summary-one-seed-verdict-before-typed.json"
SPEC = parse_spec(
    {
        "name": "verdict",
        "model": {"tiny": {}},
        "adapters": {"max_rank": 4, "train_ranks": [1, 2, 4]},
        "training": {"steps": 1},
        "methods": ["lora_grid", "matryoshka_truncated_p"],
        "verdict": {"resamples": 200},
    }
)
# each test example's score at each rank: the grid's arm at that rank, matryoshka's one run
GRID = {
    1: [1, 0, 0, 1, 0, 1, 0, 0, 1, 0],
    2: [1, 1, 0, 1, 0, 1, 0, 1, 1, 0],
    4: [1, 1, 0, 1, 1, 1, 0, 1, 1, 1],
}
NESTED = {
    1: [1, 0, 1, 1, 0, 1, 0, 0, 1, 1],
    2: [1, 1, 0, 1, 1, 1, 0, 1, 1, 0],
    4: [1, 1, 1, 1, 1, 1, 0, 1, 1, 0],
}


@pytest.mark.parametrize("name", BEFORE)
def test_a_study_summary_written_before_reads_and_writes_back_the_same(name, tmp_path):
    text = (FIXTURES / name).read_text()
    summary = read_study_summary(FIXTURES / name)
    assert json.dumps(summary.wire(), indent=2) == text
    assert write_study_summary(tmp_path, summary).read_text() == text
    assert read_study_summary(tmp_path) == summary


def pass_result(rule: str, examples: dict[int, list[float]]):
    """A test pass's result scoring `examples` (rank -> each example's score) under rule."""
    return make_result(
        scores_by_rule={rule: {r: statistics.fmean(x) for r, x in examples.items()}},
        examples={"test": {"score": {rule: examples}}},
    )


def verdict_summary():
    """A one-seed study's summary with the verdict study_verdict makes of GRID and NESTED, each
    method holding its own intervals as rankstudy.study.summary.summarise gives them."""
    chosen = {(f"lora_r{r}", "scaled"): {0: pass_result("scaled", {r: x})} for r, x in GRID.items()}
    chosen[("matryoshka", "truncated_p")] = {0: pass_result("truncated_p", NESTED)}
    methods = {
        m: score_method(m, SPEC, chosen, [make_result(cost={"train_flops": f})], [0], 1)
        for m, f in (("lora_grid", 3e9), ("matryoshka_truncated_p", 1e9))
    }
    verdict = study_verdict(SPEC, methods, chosen, [0], print)
    for name, m in methods.items():
        m.intervals = verdict.intervals.methods[name]
    return make_study_summary(methods=methods, verdict=verdict)


def test_a_summary_with_a_verdict_writes_what_the_dicts_before_wrote(tmp_path):
    text = (FIXTURES / VERDICT_BEFORE).read_text()
    summary = verdict_summary()
    before = json.loads(text)
    assert summary.verdict.wire() == before["verdict"] and summary.verdict.intervals.note
    assert (
        summary.methods["lora_grid"].intervals.model_dump(mode="json")
        == (before["methods"]["lora_grid"]["intervals"])
    )
    assert write_study_summary(tmp_path, summary).read_text() == text
    assert read_study_summary(tmp_path) == summary
    assert read_study_summary(FIXTURES / VERDICT_BEFORE) == summary


def test_the_counts_once_all_called_trials_have_their_own_names():
    summary = read_study_summary(FIXTURES / BEFORE[0])
    grid = summary.methods["lora_grid"]
    raw = json.loads((FIXTURES / BEFORE[0]).read_text())["methods"]["lora_grid"]
    assert grid.search_trials == raw["trials"] == 6  # 3 arms x 2 search trials
    assert grid.cost.paid_runs == raw["cost"]["trials"] == 9  # and their 3 arms' seed repeats
    assert PointEntry.of(grid).search_trials == 6
    assert grid.intervals.model_dump(mode="json") == raw["intervals"]
    assert summary.report.endswith("report.html")


def test_a_report_not_built_is_null_and_one_never_reached_is_absent(tmp_path):
    summary = make_study_summary()
    assert "report" not in summary.wire() and "registered" not in summary.wire()
    summary.report = None
    assert summary.wire()["report"] is None and "registered" not in summary.wire()
    assert "report" in read_study_summary(write_study_summary(tmp_path, summary)).model_fields_set


def test_a_sweep_summary_written_before_reads_and_writes_back_the_same(tmp_path):
    text = (FIXTURES / "sweep_summary-before-typed.json").read_text()
    sweeps = read_sweep_summaries(FIXTURES / "sweep_summary-before-typed.json")
    assert [s.complete for s in sweeps] == [True, False]
    assert sweeps[0].missing["1.0"]["matryoshka"].startswith("arm matryoshka: no trial succeeded")
    assert json.dumps(sweep_body(sweeps), indent=2) == text
    assert write_sweep_summaries(tmp_path, sweeps).read_text() == text


def test_a_file_that_is_no_summary_is_refused(tmp_path):
    (tmp_path / "study_summary.json").write_text('{"methods": {}}')
    with pytest.raises(SummaryError, match="is not a study summary"):
        read_study_summary(tmp_path)
    (tmp_path / "study_summary.json").write_text('{"meth')
    with pytest.raises(SummaryError, match="cut short or corrupt"):
        read_study_summary(tmp_path)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A local MLflow store (sqlite: MLflow refuses a new file store) the tests share."""
    return f"sqlite:///{tmp_path_factory.mktemp('codec') / 'mlflow.db'}"


def logged_method(uri: str, summary, verdict=None):
    """`summary` logged as a study logs a method, in a study of its own; its run."""
    name = f"codec-{uuid.uuid4().hex[:8]}"
    tracker = StudyTracker(uri, name)
    tracker.start_study(name, {"name": name})
    tracker.log_method("m", summary, None, verdict)
    client = MlflowClient(uri)
    runs = client.search_runs(
        [tracker.experiment_id], f"tags.`{names.KIND_TAG}` = '{names.METHOD}'"
    )
    return client, runs[0], tracker


def read_back(client, run):
    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    return from_mlflow(run.data.tags, run.data.metrics, history)


def test_a_method_summary_goes_to_mlflow_and_comes_back_equal(store):
    summary = make_summary(
        metric="token_accuracy",
        ranks=[1, 2, 4],
        scores=[0.5, 0.625, 0.75],
        extra_scores={"token_nll": [2.5, 2.25, 2.0]},
        scores_by_seed={"0": [0.25, 0.5, 0.5], "1": [0.75, 0.75, 1.0]},
        aurac_log2=0.640625,
        aurac_linear=0.6875,
        aurac_log2_std=0.1,
        aurac_linear_std=0.2,
        inference_rule="truncated_p",
        cost={"paid_runs": 7, "device_seconds": 12.5, "flops": 3e12, "money": 1.25},
        search_trials=4,
    )
    client, run, tracker = logged_method(store, summary)
    assert read_back(client, run) == summary
    assert point_from_mlflow(run.data.metrics) == PointEntry.of(summary)
    # the names recorded studies hold
    assert {"aurac_log2", "aurac_linear_std", "trials", "cost_trials", "cost_money"} <= set(
        run.data.metrics
    )
    assert {"test_score", "test_token_nll", "test_score_seed0", "test_score_seed1"} <= set(
        run.data.metrics
    )
    tracker.finish_study(make_study_summary(missing={"dylora": "arm dylora: no trial succeeded"}))
    parent = client.get_run(tracker.parent_id)
    assert missing_from_tags(parent.data.tags) == {"dylora": "arm dylora: no trial succeeded"}


def test_a_summary_with_intervals_comes_back_without_them(store):
    """The intervals travel whole in the study's verdict; the run holds their ends."""
    summary = read_study_summary(FIXTURES / BEFORE[0])
    grid = summary.methods["lora_grid"]
    client, run, _ = logged_method(store, grid, summary.verdict)
    assert read_back(client, run) == grid.model_copy(update={"intervals": None})
    low = grid.intervals.aurac_log2.low
    assert run.data.metrics["aurac_log2_low"] == low


def test_a_method_run_logged_before_its_tags_reads_with_the_given_metric(store):
    _, run, _ = logged_method(store, make_summary(metric="exact_match"))
    tags = {k: v for k, v in run.data.tags.items() if k not in (names.METRIC_TAG, names.RULE_TAG)}
    back = from_mlflow(tags, run.data.metrics, lambda k: {1: run.data.metrics[k]}, "accuracy")
    assert (back.metric, back.inference_rule) == ("accuracy", None)
