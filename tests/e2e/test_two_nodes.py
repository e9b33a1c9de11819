"""The closest this machine gets to a cluster: a Ray head and a second Ray node, two `ray start`
processes with their own CPUs (each in its own process group, ended by group id). Each node
keeps its trials' working copies in its own scratch folder ($RANKSTUDY_SCRATCH), which no other
node and not the driver reads: the study's storage (a third folder, standing in for S3) is the
only place they meet. A small study joins them; its trials must land on both nodes, and from
each node a task pinned there must reach the study's MLflow store and every trial's result and
checkpoint through the storage."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from studies import ROOT, TINY, VENV_BIN, end_group, free_port, write_spec


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
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ | {"RAY_AUTH_MODE": "disabled"},
        timeout=120,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
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
        yield address, ids, logs
    finally:
        for proc in reversed(nodes):
            end_group(proc)


REACH = """
import json, sys
from pathlib import Path
import ray
from mlflow.tracking import MlflowClient
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rankstudy.storage import TrialStorage

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
    address, ids, logs = two_nodes
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
