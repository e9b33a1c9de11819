"""Each arm's Optuna search in the report: drawn from the storage the study logged (written
here by the study's own searcher), with parameter importance only where an arm has enough
complete trials, and the reason said where it has not."""

import re

import optuna
import pytest
from mlflow.tracking import MlflowClient

from rankstudy.core.spec import ParamRange
from rankstudy.study.optuna_storage import storage_url
from rankstudy.study.search import ArmSearch
from rankstudy_report import build_report
from rankstudy_report.searches import across_arms, importance_note
from report_store import fill_study

SPACE = {
    "training.lr": ParamRange(low=1e-4, high=1e-2, log=True),
    "training.weight_decay": ParamRange(low=0.0, high=0.1),
}


def search_arms(out) -> None:
    """Five trials per arm: m0's all complete, two of m1's, none of m2's (they crashed)."""
    search = ArmSearch(
        {f"m{i}": ["scaled"] for i in range(3)},
        SPACE,
        5,
        0,
        [0],
        storage=storage_url(out),
        study="searched",
    )
    configs = {f"t{i}": search.suggest(f"t{i}") for i in range(15)}
    for trial_id, c in configs.items():
        ok = c["arm"] == "m0" or (c["arm"] == "m1" and c["trial"] < 2)
        score = {
            "selection_metric": c["training__lr"] * 100 - c["training__weight_decay"],
            "out_dir": f"/trials/{trial_id}",
        }
        search.on_trial_complete(trial_id, score if ok else None, error=not ok)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("searched")
    search_arms(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    fill_study(
        uri,
        "searched",
        3,
        [1, 2],
        [0],
        2,
        20,
        failed=frozenset({"m2"}),
        searches=root / "optuna.db",
    )
    page = build_report(uri, root / "report", experiment="searched")
    return uri, page.read_text()


def test_each_arm_shows_its_optuna_search(searched):
    _, html = searched
    drawn = re.findall(r'<figure class="search-view" id="optuna-(m\d)-(\w+)">\s*<svg', html)
    assert drawn == [
        ("m0", "history"),
        ("m0", "slice"),
        ("m0", "importance"),
        ("m1", "history"),
        ("m1", "slice"),
    ]
    text = " ".join(html.split())
    m0 = text[text.index('id="optuna-m0"') : text.index('id="optuna-m1"')]
    assert "Optuna study <code>searched/m0/seed0</code>: 5 of 5 trials complete.</p>" in m0
    for axis in ("training__lr", "training__weight_decay", "validation (selection metric)"):
        assert axis in m0  # SVG text: the plots are of this arm's parameters and objective
    m1 = text[text.index('id="optuna-m1"') : text.index('id="optuna-m2"')]
    assert "2 of 5 trials complete. Not enough trials for parameter importance: 2 " in m1
    assert "0 of 5 trials complete. No trial completed: nothing to draw." in text


def test_the_storage_and_the_views_are_logged_to_the_study_run(searched):
    uri, _ = searched
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("searched").experiment_id
    parent = client.search_runs([experiment], "tags.`rankstudy.kind` = 'study'")[0]
    assert "optuna.db" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report/figures")}
    assert "report/figures/search_m0_importance.svg" in figures
    assert "report/figures/search_m1_importance.svg" not in figures


def test_importance_needs_two_parameters_and_five_complete_trials():
    assert importance_note(5, 2) is None
    assert importance_note(4, 2).startswith("Not enough trials for parameter importance")
    assert importance_note(20, 1).startswith("No parameter importance: one parameter")


def test_every_arms_trials_on_one_parallel_coordinates_plot(searched, tmp_path):
    _, html = searched
    start = html.index('<figure class="search-view" id="optuna-across-arms">')
    across = html[start : html.index("</figure>", start)]
    labels = re.findall(r">([^<>]+)</text>", across)  # SVG text: axes, ticks
    # Optuna's axes (it cuts a name past 20 characters), the arm axis ticked with the arms
    for axis in ("arm", "training__lr", "training__weight_...", "m0", "m1"):
        assert axis in labels
    assert "m2" not in labels  # none of its trials completed
    # from the arms' own studies; one arm with complete trials has nothing to set beside
    search_arms(tmp_path)
    storage = storage_url(tmp_path)
    studies = [
        optuna.load_study(study_name=n, storage=storage)
        for n in optuna.get_all_study_names(storage)
    ]
    complete = sum(len(s.get_trials(states=[optuna.trial.TrialState.COMPLETE])) for s in studies)
    assert complete == 7  # m0's five, m1's two
    assert across_arms(studies) is not None
    assert across_arms([s for s in studies if s.study_name.endswith("m0/seed0")]) is None
