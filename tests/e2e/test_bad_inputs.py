"""Inputs a model or a machine cannot take: each refused before compute with a message that
names the field (or option) and what was wrong, and nothing already recorded is lost. Spec
fields that are wrong on their own are in test_spec.py; these need the model, the disk or the
cluster to judge."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from bad_inputs import MODEL_FIT, SPEC
from rankstudy.core.spec import SpecError, parse_spec
from rankstudy.storage import disk
from rankstudy.study.driver import Study, StudyError
from rankstudy.study.model_fit import check_fits_model
from rankstudy.study.ray_cluster import ClusterError, check_resources
from rankstudy.study.waiting import WaitWatch
from rankstudy.trial.checkpoint import CorruptCheckpoint
from rankstudy.trial.lifecycle import run_trial
from studies import free_port, study_job, write_spec


@pytest.mark.parametrize("override,message", MODEL_FIT, ids=[m[0][:30] for m in MODEL_FIT])
def test_a_field_the_model_cannot_take_is_named(override, message):
    overrides = [override]
    if override.startswith("task="):  # a text task on the tiny model: byte vocab, 64 positions
        overrides += ["model.tiny.vocab=258", "model.tiny.max_positions=64"]
    spec = parse_spec(SPEC, overrides)  # valid alone
    with pytest.raises(SpecError) as e:
        check_fits_model(spec)
    assert str(e.value).startswith(message), str(e.value)  # the field at fault, then why


def test_the_spec_as_shipped_fits_its_model():
    check_fits_model(parse_spec(SPEC))
    side = "the smallest adapted matrix (model.layers.0.self_attn.v_proj) has 16 rows or columns"
    with pytest.raises(SpecError, match=re.escape(side)):
        check_fits_model(parse_spec(SPEC, ["adapters.max_rank=32", "adapters.train_ranks=[1,32]"]))


def test_a_hub_model_out_of_reach_is_left_to_the_trials(monkeypatch, capsys):
    """Offline (as here) and not cached: said, and not an error: the nodes that run the trials
    may reach the hub, and load the model themselves."""
    from rankstudy.study import model_fit

    monkeypatch.setattr(model_fit, "answers", lambda address: False)
    check_fits_model(parse_spec(SPEC | {"model": {"name": "some-org/some-model"}}))
    assert (
        "model some-org/some-model: its config is not within reach here" in capsys.readouterr().out
    )


def test_a_model_folder_without_a_config_is_named(tmp_path):
    spec = parse_spec(SPEC | {"model": {"name": str(tmp_path)}})
    with pytest.raises(SpecError, match=f"model {tmp_path}: cannot read the model's config"):
        check_fits_model(spec)


def study(tmp_path, out="out", resume=False, spec=SPEC) -> Study:
    return Study(str(write_spec(tmp_path, spec)), [], str(tmp_path / out), resume)


def test_an_out_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--out: .*/file is a file, so no folder .* can be made"):
        study(tmp_path, out="file/out")


def test_a_storage_path_that_is_not_there_is_refused(tmp_path):
    spec = SPEC | {"storage": str(tmp_path / "mnt" / "shared")}
    with pytest.raises(ValueError, match="storage: .*/mnt/shared is not an existing folder"):
        study(tmp_path, spec=spec)
    assert not (tmp_path / "mnt").exists()  # never made here: other nodes would not see it


def test_a_storage_path_from_the_environment_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSTUDY_STORAGE", str(tmp_path / "gone"))
    with pytest.raises(ValueError, match="RANKSTUDY_STORAGE: .*/gone is not an existing folder"):
        study(tmp_path)


def test_a_full_disk_is_refused_before_the_study(tmp_path, monkeypatch):
    full = SimpleNamespace(total=10 * 2**30, used=10 * 2**30, free=3 * 2**20)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: full)
    with pytest.raises(ValueError, match="--out: .* has 3 MiB free; a study needs at least 64"):
        study(tmp_path)


@pytest.mark.parametrize(
    "state,message",
    [
        (
            '{"trials": {"lora_r1/a": {"key": "lora_r1/a", "st',
            "cannot be read (Unterminated string",
        ),
        ("[]", "is not a study state (no trials and tests)"),
    ],
    ids=["cut-short", "not-a-state"],
)
def test_a_damaged_state_file_stops_the_resume_and_is_kept(tmp_path, state, message):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "study_state.json").write_text(state)
    with pytest.raises(StudyError, match=r"--resume: .*study_state.json " + re.escape(message)):
        study(tmp_path, resume=True)
    assert (tmp_path / "out" / "study_state.json").read_text() == state


def test_a_result_cut_short_makes_a_failed_trial_not_a_crash(tmp_path):
    from rankstudy.core.trial_request import Selection, TrialReport, TrialRequest
    from rankstudy.study.tuner import EndedTrial
    from rankstudy.tracking.tracker import StudyTracker

    s = study(tmp_path)
    s.attach(StudyTracker(f"sqlite:///{tmp_path / 'm.db'}", "e")).tracker.start_study("s", {})
    trial_dir = tmp_path / "out" / "trials" / "matryoshka" / "t0"
    trial_dir.mkdir(parents=True)
    (trial_dir / "result.json").write_text('{"arm": "matryoshka", "scores_by_rule": {"sca')
    asked = TrialRequest(arm="matryoshka", phase="search", trial=0)
    report = TrialReport(out_dir=str(trial_dir), selection=Selection(metric=0.5))
    ended = EndedTrial(asked, report, trial_dir, *asked.keys(trial_dir))
    record = s.keep_ended(ended, None)
    s.recorder.flush()
    assert record.status == "failed"
    assert "result.json cannot be read (cut short or corrupt" in record.failure
    assert json.loads((tmp_path / "out" / "study_state.json").read_text())["trials"]


def test_a_corrupt_checkpoint_is_named_moved_aside_and_the_retry_starts_over(tmp_path):
    config = {"spec": SPEC, "arm": "matryoshka", "out_dir": str(tmp_path / "t"), "overrides": []}
    whole = run_trial(config).wire()
    ckpt = tmp_path / "t" / "checkpoints"
    states = next((ckpt / "step4").glob("*model_states.pt"))
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match=r"checkpoint .*step4 cannot be read .* step 0"):
        run_trial(config)
    assert not ckpt.exists() and (tmp_path / "t" / "checkpoints.corrupt-step4").is_dir()
    again = run_trial(config).wire()
    assert not again["resumed_from"] and again["steps"] == 4
    assert again["scores_by_rule"] == whole["scores_by_rule"]  # the same run, from step 0


def test_an_explicit_address_nobody_answers_is_named(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    proc = study_job(tmp_path / "out", "--address", address, spec=str(write_spec(tmp_path, SPEC)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--address / RAY_ADDRESS: nothing answers at {address}" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_dead_head_recorded_on_the_machine_is_said_and_passed_over():
    """A head that died leaves its address in Ray's temp folder; Ray would retry it for
    minutes. RAY_TMPDIR points this process's Ray (and the recorded address) at a folder of
    the test's own, so no other Ray on the machine is touched."""
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths are bounded
    try:
        (Path(temp) / "ray").mkdir()
        dead = f"127.0.0.1:{free_port()}"
        (Path(temp) / "ray" / "ray_current_cluster").write_text(dead)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": temp}
        code = (
            "from rankstudy.study.ray_cluster import connect_ray; import ray; connect_ray(None); "
            "print('joined', ray.cluster_resources()['CPU'])"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        recorded = f"the Ray head recorded in {temp}/ray/ray_current_cluster ({dead})"
        assert f"{recorded} does not answer (it has stopped or died); starting a Ray" in proc.stdout
        assert "joined" in proc.stdout
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_more_workers_than_the_cluster_has_is_refused_before_any_trial(tmp_path):
    out = tmp_path / "out"
    proc = study_job(
        tmp_path, "--out", str(out), "--address", "local", "--set", "resources.workers=64"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "resources.workers: a trial of 64 worker(s) needs CPU 65 at once; the cluster has" in (
        proc.stderr
    )
    assert "no autoscaler to add more" in proc.stderr
    assert not (out / "trials").exists()


NODE = {"CPU": 16.0, "GPU": 0.0}
GPU_NODE = {"CPU": 8.0, "GPU": 4.0}


@pytest.mark.parametrize(
    "sets,types,scales,message",
    [
        (["resources.cpus_per_worker=32"], {"n": NODE}, True, "resources.cpus_per_worker: a"),
        (["resources.use_gpu=true"], {"n": NODE}, True, "resources.use_gpu: a trial needs"),
        (["resources.workers=3"], {"n": {"CPU": 3.0}}, False, "resources.workers: a trial of 3"),
        (["resources.use_gpu=true", "resources.workers=8"], {"g": GPU_NODE}, False, "GPU 8 at"),
    ],
)
def test_a_request_no_node_can_hold_is_refused(sets, types, scales, message):
    with pytest.raises(ClusterError, match=message):
        check_resources(parse_spec(SPEC, sets), types, scales)


def test_an_autoscaler_that_can_add_nodes_makes_a_large_request_wait_not_fail():
    spec = parse_spec(SPEC, ["resources.use_gpu=true", "resources.workers=8"])
    check_resources(spec, {"head": NODE, "gpu-worker": GPU_NODE}, scales=True)


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_waiting_is_said_periodically_and_given_up_after_the_timeout():
    lines, clock = [], Clock()
    watch = WaitWatch(
        "{'CPU': 2}", 100, lines.append, every=30, clock=clock, free=lambda: "CPU 0 of 2"
    )
    pending, running = SimpleNamespace(status="PENDING"), SimpleNamespace(status="RUNNING")
    for clock.now in range(0, 95, 5):
        watch.step([pending, pending])
    assert lines == [
        f"waiting for resources: 2 trial(s) need {{'CPU': 2}} each; free now: CPU 0 of 2; "
        f"waited {t} s of 100 s (resources.wait_timeout_s)"
        for t in (30, 60, 90)
    ]
    watch.step([pending, running])  # one started: the wait is over
    clock.now = 200
    watch.step([pending])
    assert not watch.gave_up  # a new wait starts now
    clock.now = 301
    watch.step([pending])
    assert watch.gave_up
