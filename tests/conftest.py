"""Shared fixtures: tiny models built locally, one torch thread (2-core machines), and the
tiny studies that several end-to-end test files only read: the served study, and the
uninterrupted references the fault tests end level with."""

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from filelock import FileLock

from studies import (
    SERVED,
    TINY,
    TWO_ARMS,
    VENV_BIN,
    free_port,
    mlflow_service,
    run_study,
    service,
    write_spec,
)

torch.set_num_threads(1)

# The studies made once per test run (once_per_run) that several files read.
SHARED = {"served_study", "two_arms_reference"}
# Module names each family's adapters target in the tests.
TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj"],
}


def pytest_collection_modifyitems(config, items):
    """Files holding slow tests first, each file's tests in their own order (run.sh passes
    --no-loadscope-reorder: pytest-xdist would otherwise put the files with the most tests
    first, the slow end-to-end files last, where they ran alone while the other workers had
    finished). Under --dist loadfile each file goes whole to the next free worker, in this
    order. Of the files that read a study made once per run (SHARED), the first goes first, to
    make it while the others run files of their own; the rest of its readers go after those."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    shared: dict[Path, set[str]] = {}  # file -> the shared studies its tests read
    for item in items:
        shared.setdefault(item.path, set()).update(SHARED.intersection(item.fixturenames))
    first_reader, rank = {}, {}
    for path, reads in shared.items():
        makes = [first_reader.setdefault(name, path) == path for name in sorted(reads)]
        rank[path] = (0 if any(makes) else 2 if reads else 1) if path in slow else 3
    items.sort(key=lambda item: rank[item.path])  # a stable sort


@pytest.fixture(autouse=True)
def no_tracking_uri_left_behind():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI to os.environ: a test that leaves it
    set sends every later study on its worker (a subprocess inherits it) to its store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    assert os.environ.get("MLFLOW_TRACKING_URI") == before, "MLFLOW_TRACKING_URI left changed"


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head in its own process group (auth off, this machine only), ended by group id:
    its dashboard (for `ray job submit`) and GCS (for a driver) addresses."""
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths are bounded
    port, dashboard = free_port(), free_port()
    env = os.environ | {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--dashboard-port={dashboard}",
        # the job agent's own port: Ray's default (52365) is taken by any other Ray here (a
        # study another worker runs), and a head without its job agent refuses every job
        f"--dashboard-agent-listen-port={free_port()}",
        "--dashboard-host=127.0.0.1",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    address = f"http://127.0.0.1:{dashboard}"
    # 5 s to exit on SIGTERM, then SIGKILL to its group (every process of the head is in it):
    # a head that has run jobs took longer than the default 20 s, spent idle in teardown
    with service(command, f"{address}/api/version", "the Ray head", env, grace=5):
        yield SimpleNamespace(dashboard=address, gcs=f"127.0.0.1:{port}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (its own process group, ended by group id), one for the
    session: each test writes its own experiment."""
    uri = f"http://127.0.0.1:{(port := free_port())}"
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_service(port, root):
        yield uri


@pytest.fixture(scope="session")
def worker_id(request) -> str:
    """pytest-xdist's worker id ("gw0", ...), or "master" in a run without xdist: its own
    fixture of that name is missing under `-p no:xdist`."""
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


def once_per_run(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """A folder `make(folder)` fills once per test run, not once per pytest-xdist worker: the
    first worker to ask makes it under a lock in the run's shared temporary folder, the others
    wait and read it (tests only read these studies)."""
    if worker_id == "master":  # no xdist: this process is the whole run
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".made").exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            (folder / ".made").touch()
    return folder


def study_in(spec: dict):
    """make(folder) for once_per_run: the spec run as a study into folder/out."""
    return lambda folder: run_study(write_spec(folder, spec), folder / "out")


@pytest.fixture(scope="session")
def served_study(tmp_path_factory, worker_id) -> tuple[Path, Path]:
    """(spec path, study folder): every LoRA rank, DyLoRA and Matryoshka, one search trial per
    arm, seeds 0 and 1, served under the paper's rule, truncated_p and svd; its end registers
    the recommended rank in MLflow's registry."""
    spec = TINY | {
        "name": "tiny-served",
        "training": TINY["training"] | {"steps": 12},
        "methods": SERVED,
        "search": {"trials_per_arm": 1},
        "seeds": [0, 1],
        "tracking": {"register_as": "tiny-served"},  # its end registers the recommended rank
    }
    folder = once_per_run(tmp_path_factory, worker_id, "served", study_in(spec))
    return folder / "spec.yaml", folder / "out"


@pytest.fixture(scope="session")
def two_arms_reference(tmp_path_factory, worker_id) -> dict:
    """The summary of the two-arm tiny study (studies.TWO_ARMS) run once without a fault: what
    a study killed, stopped or submitted elsewhere must end with."""
    folder = once_per_run(tmp_path_factory, worker_id, "two-arms-reference", study_in(TWO_ARMS))
    return json.loads((folder / "out" / "study_summary.json").read_text())
