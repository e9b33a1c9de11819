"""What the study tests share: the tiny study spec, running `jobs/study.py` as a user does,
and servers (a Ray head, an MLflow server) each in its own process group, ended by group id."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
# the real GSM8K beside the repository (../shared), never committed
GSM8K_DATA = ROOT.parent / "shared" / "data" / "gsm8k"
VENV_BIN = Path(sys.executable).parent

TINY = {
    "name": "tiny-study",
    "model": {"tiny": {"hidden": 64, "layers": 2, "vocab": 256}},
    "task": {
        "kind": "planted",
        "shift": 0.5,
        "planted_rank": 8,
        "seq_len": 16,
        "train_size": 512,
        "validation_size": 32,
        "test_size": 32,
    },
    "adapters": {"max_rank": 8, "train_ranks": [1, 2, 4, 8]},
    "training": {"steps": 60, "micro_batch_size": 16, "log_every": 30, "checkpoint_every": 20},
    "methods": ["lora_grid", "dylora", "matryoshka", "matryoshka_truncated_p"],
    "search": {"trials_per_arm": 2},
}
ARMS = 6  # lora_r1, r2, r4, r8, dylora, matryoshka
# the tiny study with two arms, for the tests that check a study's bookkeeping through a fault
TWO_ARMS = TINY | {"name": "tiny-two-arms", "methods": ["dylora", "matryoshka"]}
TWO_ARMS_TRIALS = 2 * 2  # two search trials an arm
# the session's served study (conftest.served_study): the svd rules beside the paper's
SERVED = [
    "lora_grid",
    "lora_truncated",
    "lora_svd",
    "dylora",
    "matryoshka",
    "matryoshka_truncated_p",
    "matryoshka_svd",
]

# the same tiny spec, made a quick single trial: fewer steps, larger evaluation splits
SMALL = TINY | {
    "name": "tiny",
    "task": TINY["task"] | {"train_size": 256, "validation_size": 64, "test_size": 64},
    "adapters": TINY["adapters"] | {"inference_rules": ["scaled", "truncated_p"]},
    "training": {
        "steps": 12,
        "micro_batch_size": 16,
        "lr": 3e-3,
        "log_every": 4,
        "eval_every": 6,
        "checkpoint_every": 6,
    },
    "deepspeed": {"zero_stage": 2},
}


def write_spec(tmp_path, spec=TINY, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def service(command: list[str], url: str, what: str, env: dict | None = None, grace: float = 20):
    """A server in its own process group, up once `url` answers, ended by group id (grace:
    the seconds it gets to exit on SIGTERM)."""
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"{what} did not come up")
                time.sleep(1)
        yield proc
    finally:
        end_group(proc, grace)


def end_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """End a process started in its own session, and everything it started, by group id."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def study_job(out: Path, *args: str, spec: str = "jobs/specs/planted-cpu.yaml"):
    """`python jobs/study.py --spec SPEC --out OUT ARGS...` from the repo root."""
    return subprocess.run(
        [sys.executable, "jobs/study.py", "--spec", spec, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a guard against a hang, not a speed target
    )


def mlflow_runs(summary):
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([summary["mlflow"]["experiment_id"]], max_results=1000)
    return client, runs


def run_study(spec, out, *args, wait=True):
    cmd = [
        sys.executable,
        "jobs/study.py",
        "--spec",
        str(spec),
        "--out",
        str(out),
        "--address",
        "local",
        *args,
    ]
    with open(out.parent / f"{out.name}.log", "a") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    if wait:
        assert proc.wait(timeout=1200) == 0, (out.parent / f"{out.name}.log").read_text()[-4000:]
    return proc


def wait_for_trials(proc, state: Path, count: int, timeout: float = 600) -> None:
    """Until the running study has recorded `count` search trials (or has exited)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and len(json.loads(state.read_text()).get("trials", {})) >= count:
            return
        time.sleep(0.2)


def scores(summary):
    return {m: (v["scores"], v["aurac_log2"]) for m, v in summary["methods"].items()}


def mlflow_service(port: int, root: Path, what: str = "the MLflow server"):
    """A real MLflow tracking server on the port (mlflow_command), up until the block ends.
    On SIGTERM it waits for its clients' idle keep-alive connections: 3 s, then SIGKILL (its
    sqlite store has committed every answered request)."""
    url = f"http://127.0.0.1:{port}/health"
    # without MLflow 3's job runner (GenAI jobs, its own worker pools): none of this uses it
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return service(mlflow_command(port, root), url, what, env=env, grace=3)


def mlflow_command(port: int, root: Path) -> list[str]:
    """A real MLflow tracking server on localhost, its store and artifacts under root, serving
    artifacts as a cluster's head does."""
    return [
        *(str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1"),
        *("--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{root / 'server.db'}"),
        *("--artifacts-destination", str(root / "artifacts")),
    ]
