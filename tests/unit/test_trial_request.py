"""How a trial request and a trial's report travel through Tune (rankstudy.core.trial_request):
the exact keys studies were saved with (a study saved by an earlier rankstudy resumes), the
trial's folder and book keys, and the overrides and splits a request adds."""

from pathlib import Path

from rankstudy.core.trial_request import Selection, StudyRef, TrialReport, TrialRequest
from rankstudy.core.tune_keys import FAILED_METRIC

STUDY = StudyRef(spec={"name": "s"}, overrides=["seed=0"], study_dir="/s", storage=None)
SEARCH = TrialRequest(arm="dylora", phase="search", trial=2, params={"training.lr": 0.003})
TEST = TrialRequest(
    arm="dylora",
    phase="test",
    trial=2,
    params={"training.lr": 0.003},
    test_of="/s/trials/dylora/ab12",
    rules=["scaled", "truncated_p"],
    seed=7,
)


def test_a_search_request_is_the_flat_config_studies_were_saved_with():
    # as the searcher of rankstudy before these records wrote it (search.py, 2026-12-03)
    saved = {"arm": "dylora", "phase": "search", "trial": 2, "training__lr": 0.003}
    assert SEARCH.tune() == saved
    assert TrialRequest.of_tune(STUDY.tune() | saved) == SEARCH  # Tune adds the study's keys
    assert StudyRef.of_tune(STUDY.tune() | saved) == STUDY


def test_a_test_pass_is_the_flat_config_studies_were_saved_with():
    saved = {
        "arm": "dylora",
        "phase": "test",
        "trial": 2,
        "test_of": "/s/trials/dylora/ab12",
        "rules": ["scaled", "truncated_p"],
        "seed": 7,
        "first_seed": False,
        "param:training__lr": 0.003,
    }
    assert TEST.tune() == saved
    assert TrialRequest.of_tune(STUDY.tune() | saved) == TEST


def test_each_request_names_its_folder_keys_overrides_and_splits():
    assert SEARCH.folder("/s", "ab12") == Path("/s/trials/dylora/ab12")
    assert SEARCH.keys(Path("/s/trials/dylora/ab12")) == ("dylora/ab12", "dylora/ab12")
    assert SEARCH.overrides() == ["training.lr=0.003"] and SEARCH.splits() == ["validation"]
    first = TEST.model_copy(update={"first_seed": True})
    assert first.folder("/s", "cd34") == Path("/s/trials/dylora/ab12")  # scored in place
    assert first.splits() == ["test"] and first.overrides() == ["training.lr=0.003"]
    repeat = TEST.folder("/s", "cd34")
    assert repeat == Path("/s/trials/dylora/ab12-seed7")
    assert TEST.keys(repeat) == ("dylora/ab12-seed7", "dylora/ab12-seed7/7")
    assert TEST.overrides() == ["training.lr=0.003", "seed=7"]
    assert TEST.splits() == ["validation", "test"]


def test_a_report_reads_back_from_what_tune_keeps():
    report = TrialReport(out_dir="/s/trials/dylora/ab12", params={"training.lr": 0.003}, node="n1")
    selection = Selection(metric=0.7, by_rule={"truncated_p": 0.6})
    assert Selection.of_tune(selection.tune()) == selection
    end = report.with_selection(selection)
    assert end.tune() == {
        "out_dir": "/s/trials/dylora/ab12",
        "failed": False,
        "node": "n1",
        "param:training__lr": 0.003,
        "selection_metric": 0.7,
        "selection_truncated_p": 0.6,
    }
    # Tune adds its own keys to a result (config/..., trial_id, time_total_s): never read
    tune_result = end.tune() | {"trial_id": "ab12", "config/training__lr": 0.003}
    assert TrialReport.of_tune(tune_result) == end
    interim = report.with_selection(selection, step=6)
    assert interim.tune() | {} == end.tune() | {
        "interim": True,
        "step": 6,
    }
    assert TrialReport.of_tune(interim.tune()) == interim
    failed = report.model_copy(update={"failed": True})
    assert failed.tune()["selection_metric"] == FAILED_METRIC
    assert TrialReport.of_tune(failed.tune()).selection is None
    assert TrialReport.of_tune({"trial_id": "ab12"}) is None  # it reported nothing
