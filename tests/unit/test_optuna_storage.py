"""The searcher's Optuna studies in a real sqlite storage, read back by Optuna and by
optuna-dashboard's app: one study per arm, named, continued by a restored searcher, started
afresh by a new one."""

import json
import wsgiref.util

import optuna
import optuna_dashboard
from optuna.trial import TrialState

from rankstudy.core.spec import ParamRange
from rankstudy.study.optuna_storage import storage_url
from rankstudy.study.search import ArmSearch

SPACE = {
    "training.lr": ParamRange(low=1e-4, high=1e-2, log=True),
    "training.weight_decay": ParamRange(low=0.0, high=0.1),
}
ARMS = {"lora_r2": ["scaled"], "matryoshka": ["scaled"]}
NAMES = {"demo/lora_r2/seed3", "demo/matryoshka/seed3"}


def searcher(tmp_path, space=SPACE) -> ArmSearch:
    return ArmSearch(ARMS, space, 3, 3, [0], storage=storage_url(tmp_path), study="demo")


def run(search: ArmSearch, ids: list[str], score=lambda c: c.get("training__lr", 0.5)) -> dict:
    """Suggest a trial per id, then end each with its score: trial id -> its config."""
    configs = {i: search.suggest(i) for i in ids}
    for i, c in configs.items():
        search.on_trial_complete(i, {"selection_metric": score(c), "out_dir": f"/t/{i}"})
    return configs


def stored(storage: optuna.storages.RDBStorage, arm: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"demo/{arm}/seed3", storage=storage).trials


def reader(tmp_path) -> optuna.storages.RDBStorage:
    """The storage as another process opens it (optuna.db in the study's folder)."""
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_each_arm_searches_in_its_own_named_study(tmp_path):
    search = searcher(tmp_path)
    configs = run(search, ["a", "b", "c", "d"])
    search.suggest("e")
    search.on_trial_complete("e", None, error=True)  # a crashed trial
    storage = reader(tmp_path)
    summaries = optuna.get_all_study_summaries(storage)
    assert {s.study_name for s in summaries} == NAMES
    assert {s.user_attrs["arm"] for s in summaries} == set(ARMS)
    assert all(s.direction == optuna.study.StudyDirection.MAXIMIZE for s in summaries)
    for arm in ARMS:
        told = [c for c in configs.values() if c["arm"] == arm]
        trials = stored(storage, arm)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert [t.value for t in complete] == [c["training__lr"] for c in told]
        assert [t.params for t in complete] == [
            {k: c[k] for k in ("training__lr", "training__weight_decay")} for c in told
        ]
    crashed = stored(storage, search.owner["e"][0])[-1]
    assert crashed.state == TrialState.FAIL


def test_a_restored_searcher_goes_on_in_the_same_studies(tmp_path):
    search = searcher(tmp_path)
    run(search, ["a", "b"])
    search.save(str(tmp_path / "searcher.pkl"))  # as Tune saves it
    lost = search.suggest("c")  # asked for after the save, then the driver is killed
    again = searcher(tmp_path)  # what Tune unpickles, then restores
    again.restore(str(tmp_path / "searcher.pkl"))
    rerun = run(again, ["c2", "d"])
    assert rerun["c2"]["arm"] == lost["arm"]
    assert rerun["c2"]["training__lr"] == lost["training__lr"]  # the same search goes on
    storage = reader(tmp_path)
    assert set(optuna.get_all_study_names(storage)) == NAMES
    trials = stored(storage, lost["arm"])
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == trials[1].params  # the lost one, told FAIL, and its rerun
    other = next(a for a in ARMS if a != lost["arm"])
    assert [t.state for t in stored(storage, other)] == [TrialState.COMPLETE] * 2


def test_a_search_started_afresh_replaces_a_study_no_saved_searcher_knows(tmp_path):
    run(searcher(tmp_path), ["a", "b"])
    storage = reader(tmp_path)
    first = {arm: stored(storage, arm)[0].params for arm in ARMS}
    run(searcher(tmp_path), ["c", "d"])  # a resume whose Tuner could not be restored
    for arm in ARMS:
        trials = stored(storage, arm)
        assert len(trials) == 1 and trials[0].params == first[arm]  # the same seed's first


def test_an_empty_space_searches_nothing_and_writes_no_storage(tmp_path):
    configs = run(searcher(tmp_path, space={}), ["a", "b"])
    assert sorted(c["arm"] for c in configs.values()) == sorted(ARMS)
    assert not (tmp_path / "optuna.db").exists()


def get(app, path: str) -> dict:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, *_: status.append(s)))
    assert status == ["200 OK"], body[:500]
    return json.loads(body)


def test_optuna_dashboard_opens_the_storage(tmp_path):
    search = searcher(tmp_path)
    run(search, ["a", "b", "c", "d"])
    app = optuna_dashboard.wsgi(storage_url(tmp_path))
    studies = {s["study_name"]: s for s in get(app, "/api/studies")["study_summaries"]}
    assert set(studies) == NAMES
    study = studies["demo/matryoshka/seed3"]
    detail = get(app, f"/api/studies/{study['study_id']}")
    values = [t["values"][0] for t in detail["trials"]]
    assert values == [t.value for t in stored(reader(tmp_path), "matryoshka")]
    assert len(values) == 2
