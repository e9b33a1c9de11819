"""Trial folders in the study's storage when nodes share no disk: two working copies
("nodes") that never see each other's files, one storage between them."""

import json
import shutil

import pytest

from rankstudy.core.spec import SpecError, load_spec
from rankstudy.storage.folders import TrialStorage
from rankstudy.trial.lifecycle import run_trial
from studies import SMALL


def test_push_pull_and_read_go_through_the_storage_only(tmp_path):
    study, store = tmp_path / "study", (tmp_path / "store").as_uri()
    node_a = TrialStorage(store, study, tmp_path / "a")
    node_b = TrialStorage(store, study, tmp_path / "b")
    driver = TrialStorage(store, study)
    trial = node_a.local(study / "trials" / "lora_r1" / "t0")
    (trial / "checkpoints" / "step5").mkdir(parents=True)
    (trial / "checkpoints" / "step5" / "shard.pt").write_bytes(b"x" * 100)
    (trial / "result.json").write_text('{"selection_metric": 0.5}')
    node_a.push(trial / "checkpoints" / "step5")
    node_a.push(trial / "result.json")
    assert driver.read_json(study / "trials" / "lora_r1" / "t0" / "result.json") == {
        "selection_metric": 0.5
    }
    assert not (study / "trials").exists()  # the driver read the storage, not a node's disk
    there = node_b.local(study / "trials" / "lora_r1" / "t0")
    assert node_b.pull(there / "checkpoints" / "step5")
    assert (there / "checkpoints" / "step5" / "shard.pt").read_bytes() == b"x" * 100
    assert not node_b.pull(there / "missing.json")
    with pytest.raises(FileNotFoundError, match="not in the storage"):
        driver.read_text(study / "trials" / "lora_r1" / "t9" / "result.json")


def test_without_storage_the_study_folder_is_the_storage(tmp_path):
    shared = TrialStorage(None, tmp_path, tmp_path / "ignored")
    assert shared.shared and shared.local(tmp_path / "x") == tmp_path / "x"
    assert shared.path_of("tune") == str(tmp_path / "tune")
    shared.push(tmp_path / "nothing-to-copy")  # a no-op


def test_a_test_pass_on_another_node_resumes_the_final_checkpoint_from_storage(
    tmp_path, monkeypatch
):
    """Node A trains and validates; node B, which never saw A's disk, scores it on test from
    the storage: it resumes at the last step (no training) and scores exactly what a run that
    stayed on one node scores."""
    study, store = tmp_path / "study", (tmp_path / "store").as_uri()
    canonical = study / "trials" / "dylora" / "t0"

    def on(node: str, splits: list[str]) -> dict:
        monkeypatch.setenv("RANKSTUDY_SCRATCH", str(tmp_path / node))  # this node's own disk
        config = {"spec": SMALL, "arm": "dylora", "overrides": [], "splits": splits}
        config |= {"storage": store, "study_dir": str(study), "out_dir": str(canonical)}
        return run_trial(config).wire()

    searched = on("a", ["validation"])
    tested = on("b", ["test"])
    assert tested["steps"] == searched["steps"] == SMALL["training"]["steps"]
    assert tested["loss_curve"] == searched["loss_curve"]  # B trained nothing more
    assert tested["cost"]["train_seconds"] == searched["cost"]["train_seconds"]
    stored = json.loads((tmp_path / "store" / "trials/dylora/t0/result.json").read_text())
    assert stored["scores_by_rule"] == tested["scores_by_rule"]

    one_node = {"spec": SMALL, "arm": "dylora", "overrides": [], "out_dir": str(tmp_path / "c")}
    run_trial(one_node | {"splits": ["validation"]})
    retested = run_trial(one_node | {"splits": ["test"]}).wire()
    assert retested["scores_by_rule"] == stored["scores_by_rule"]
    assert not study.exists()  # neither node worked in the study's own folder
    shutil.rmtree(tmp_path / "a")  # B's copy and the storage are all that is left
    assert (tmp_path / "store" / "trials/dylora/t0/checkpoints/latest").read_text() == (
        f"step{SMALL['training']['steps']}"
    )


def test_storage_that_is_not_a_uri_or_path_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(SMALL))
    with pytest.raises(SpecError, match=r"storage.*'bucket/prefix' is neither a storage URI"):
        load_spec(str(path), ["storage=bucket/prefix"])
    assert load_spec(str(path), ["storage=s3://bucket/prefix"]).storage == "s3://bucket/prefix"


def test_each_study_gets_its_own_folder_and_resumes_only_with_it(tmp_path, monkeypatch):
    from rankstudy.study import preflight
    from rankstudy.study.driver import Study, StudyError
    from studies import TINY, write_spec

    monkeypatch.setattr(preflight, "probe_storage", lambda uri: None)  # a bucket that answers

    spec = str(write_spec(tmp_path, TINY | {"storage": "s3://bucket/studies"}))
    one = Study(spec, [], str(tmp_path / "one"), resume=False)
    two = Study(spec, [], str(tmp_path / "two"), resume=False)
    assert one.files.storage.uri.startswith("s3://bucket/studies/tiny-study-")
    assert one.files.storage.uri != two.files.storage.uri  # same bucket: never the same path
    one.files.save()
    again = Study(spec, [], str(tmp_path / "one"), resume=True)
    assert again.files.storage.uri == one.files.storage.uri
    with pytest.raises(StudyError, match="storage: this study keeps its trials under"):
        Study(spec, ["storage=s3://other/place"], str(tmp_path / "one"), resume=True)
    monkeypatch.setenv("RANKSTUDY_STORAGE", "")  # as cluster.yaml exports it with no bucket
    plain = Study(str(write_spec(tmp_path, TINY, "plain.yaml")), [], str(tmp_path / "p"), False)
    storage = plain.files.storage
    assert storage.shared and storage.path_of("tune") == str(tmp_path / "p" / "tune")


def test_a_storage_that_never_answers_is_cut_off_at_the_bound():
    """A server that takes the connection and says nothing: the probe gives up at its bound,
    not after the client's retries."""
    import socket

    from rankstudy.storage.folders import probe_storage

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        uri = f"s3://bucket/studies?endpoint_override=127.0.0.1:{port}&scheme=http"
        assert probe_storage(uri, seconds=3) == "no answer within 3 s"
