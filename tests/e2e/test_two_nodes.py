"""The closest this machine gets to a cluster: a Ray head and a second Ray node, two `ray start`
processes with their own CPUs (each in its own process group, ended by group id). Each node
keeps its trials' working copies in its own scratch folder ($RANKSTUDY_SCRATCH), which no other
node and not the driver reads: the study's storage (a third folder, standing in for S3) is the
only place they meet. A small study joins them; its trials must land on both nodes, and from
each node a task pinned there must reach the study's MLflow store and every trial's result and
checkpoint through the storage."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from studies import (
    ROOT,
    TINY,
    TWO_ARMS,
    TWO_ARMS_TRIALS,
    VENV_BIN,
    end_group,
    free_port,
    scores,
    write_spec,
)


def start_node(args: list[str], log: Path, scratch: Path) -> subprocess.Popen:
    env = os.environ | {
        "RANKSTUDY_SCRATCH": str(scratch),  # inherited by every worker process of the node
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    return subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def ray_nodes(address: str) -> list[str]:
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
        "print('NODES', json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ | {"RAY_AUTH_MODE": "disabled"},
        timeout=120,
    )
    # the marked line: Ray may print its own lines after it
    lines = [line for line in proc.stdout.splitlines() if line.startswith("NODES ")]
    return json.loads(lines[-1].removeprefix("NODES ")) if proc.returncode == 0 and lines else []


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """(address, node ids, logs folder, node processes): a head and a worker node, each with
    one CPU, started once for this file: the study that spans them leaves both up, and the
    test that loses the worker node comes last in the file."""
    logs = tmp_path_factory.mktemp("ray-logs")
    temp = tempfile.mkdtemp(prefix="rs2-", dir="/tmp")  # short: Ray's socket paths are bounded
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_node(
        [
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            f"--temp-dir={temp}",
            "--include-dashboard=false",
        ],
        logs / "head.log",
        logs / "scratch-head",
    )
    nodes = [head]
    try:
        deadline = time.time() + 120
        while len(ray_nodes(address)) < 1 and time.time() < deadline:
            time.sleep(2)
        nodes.append(
            start_node(
                [f"--address={address}", "--num-cpus=1"], logs / "worker.log", logs / "scratch-2"
            )
        )
        while len(ray_nodes(address)) < 2 and time.time() < deadline:
            time.sleep(2)
        ids = ray_nodes(address)
        if len(ids) != 2:
            pytest.fail(f"two Ray nodes did not come up; see {logs}")
        yield address, ids, logs, nodes
    finally:
        for proc in reversed(nodes):
            end_group(proc, grace=5)  # then SIGKILL to the node's group, all of its processes


REACH = """
import json, sys
from pathlib import Path
import ray
from mlflow.tracking import MlflowClient
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rankstudy.storage.folders import TrialStorage

state = json.loads(Path(sys.argv[2]).read_text())

@ray.remote(num_cpus=0)
def reach(state, study):
    client = MlflowClient(state["tracking_uri"])
    runs = client.search_runs([state["experiment_id"]], max_results=1000)
    store = TrialStorage(state["storage"], study)
    dirs = [Path(t["out_dir"]) for t in state["trials"].values()]
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "runs": len(runs),
        "checkpoints": sum(store.read_text(d / "checkpoints" / "latest") == "step40" for d in dirs),
        "results": sum("selection_metric" in store.read_json(d / "result.json") for d in dirs),
    }

ray.init(address=sys.argv[1], logging_level="ERROR")
tasks = [
    reach.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
        state, sys.argv[4]
    )
    for n in json.loads(sys.argv[3])
]
print(json.dumps(ray.get(tasks)))
"""


@pytest.mark.slow
def test_study_spans_two_nodes(tmp_path, two_nodes):
    address, ids, logs, _ = two_nodes
    storage = (tmp_path / "storage").as_uri()
    spec = write_spec(
        tmp_path,
        TINY
        | {
            "methods": ["lora_grid", "matryoshka"],
            "adapters": {"max_rank": 4, "train_ranks": [1, 2, 4]},
            "training": TINY["training"] | {"steps": 40},
            "storage": storage,
        },
    )
    out = tmp_path / "study"
    proc = subprocess.run(
        [
            *(sys.executable, "jobs/study.py", "--spec", str(spec)),
            *("--out", str(out), "--address", address),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"RAY_AUTH_MODE": "disabled"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((out / "study_state.json").read_text())
    trials = [*state["trials"].values(), *state["tests"].values()]
    assert {t["node"] for t in trials} == set(ids)  # every node ran trials
    assert state["storage"].startswith(f"{storage}/{TINY['name']}-")  # the study's own folder
    # each node worked in its own scratch; the driver's folder holds no trial at all
    for scratch in ("scratch-head", "scratch-2"):
        assert list((logs / scratch / "trials").glob("*/*/checkpoints/latest"))
    assert not (out / "trials").exists() and (out / "report" / "report.html").is_file()

    proc = subprocess.run(
        [
            *(sys.executable, "-c", REACH, address, str(out / "study_state.json")),
            *(json.dumps(ids), str(out)),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"RAY_AUTH_MODE": "disabled"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [s["node"] for s in seen] == ids
    n = len(state["trials"])  # search trials: 3 LoRA arms + matryoshka, 2 each
    assert n == 8
    for s in seen:
        # the parent, a child per trial, a summary run per method
        assert s["runs"] == 1 + n + 2
        assert s["checkpoints"] == n and s["results"] == n


def processes_of(scratch: Path) -> list[int]:
    """Every process of a node: the node's environment ($RANKSTUDY_SCRATCH) is in each one's,
    whatever process group Ray gave it."""
    mine = f"RANKSTUDY_SCRATCH={scratch}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mine in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def part_way(scratch: Path, storage: Path) -> Path | None:
    """A trial folder on a node (under its scratch) whose checkpoint the storage holds, and not
    yet its result."""
    for latest in storage.glob("*/trials/*/*/checkpoints/latest"):
        trial = latest.parent.parent
        mine = scratch / "trials" / trial.parent.name / trial.name
        if mine.is_dir() and not (trial / "result.json").exists():
            return mine
    return None


@pytest.mark.slow
def test_a_node_lost_mid_trial_retries_it_from_its_checkpoint_elsewhere(
    tmp_path, two_nodes, two_arms_reference
):
    address, ids, logs, (_, worker) = two_nodes
    storage = tmp_path / "storage"
    spec = write_spec(tmp_path, TWO_ARMS | {"storage": storage.as_uri()})
    out = tmp_path / "study"
    with open(tmp_path / "study.log", "w") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "jobs/study.py", "--spec", str(spec)),
                *("--out", str(out), "--address", address),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"RAY_AUTH_MODE": "disabled"},
            start_new_session=True,
        )
    try:
        deadline = time.time() + 600
        while (cut := part_way(logs / "scratch-2", storage)) is None and proc.poll() is None:
            assert time.time() < deadline, "no trial reached a checkpoint on the worker node"
            time.sleep(0.05)
        for pid in processes_of(logs / "scratch-2"):  # the node is lost: raylet, trial, all
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end_group(worker, grace=5)
        assert proc.wait(timeout=900) == 0, (tmp_path / "study.log").read_text()[-4000:]
    finally:
        end_group(proc)
    summary = json.loads((out / "study_summary.json").read_text())
    assert scores(summary) == scores(two_arms_reference)  # as if no node had been lost
    state = json.loads((out / "study_state.json").read_text())
    live = [t for t in state["trials"].values() if not t["superseded"]]
    assert len(live) == TWO_ARMS_TRIALS and all(t["status"] == "ok" for t in live)
    record = state["trials"][f"{cut.parent.name}/{cut.name}"]
    survivor = ray_nodes(address)
    deadline = time.time() + 120  # the head marks a killed node dead after its health checks fail
    while len(survivor) != 1 and time.time() < deadline:
        time.sleep(2)
        survivor = ray_nodes(address)
    assert len(survivor) == 1 and survivor[0] in ids
    assert record["node"] == survivor[0]  # retried on the node that survived
    stored = Path(state["storage"].removeprefix("file://"))
    result = json.loads((stored / cut.relative_to(logs / "scratch-2") / "result.json").read_text())
    steps = TWO_ARMS["training"]["steps"]
    # from its checkpoint part-way (a test pass adds its own resume at the last step)
    assert any(0 < step < steps for step in result["resumed_from"]), result["resumed_from"]
