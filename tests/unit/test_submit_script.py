"""jobs/submit.sh's own decisions, with `ray` stood in for by a script that records its calls:
it starts a local head only when none answers and no RAY_ADDRESS is given (auth off, this
machine only, a CPU per core), then submits the study to that head. A real head is not started
here: it would take Ray's default ports, which another study on this machine may hold, and
only `ray stop` (every Ray on the machine) ends it; tests/e2e/test_study.py submits to a real
head of its own."""

import os
import shutil
import subprocess
import sys

import pytest

from studies import ROOT

RAY = """#!/usr/bin/env bash
echo "ray $* | auth=${RAY_AUTH_MODE:-} address=${RAY_ADDRESS:-}" >> "$RAY_CALLS"
case "$1" in
  status) exit "$RAY_STATUS" ;;
  job) echo "Job 'x' succeeded" ;;
esac
exit 0
"""


def submit(tmp_path, status: int, address: str | None = None) -> tuple[str, list[str]]:
    """Run a copy of jobs/submit.sh in a tree whose .venv holds the recording `ray`: (its
    output, each `ray` call with the auth mode and address it ran under)."""
    root = tmp_path / "repo"
    (root / "jobs").mkdir(parents=True)
    shutil.copy(ROOT / "jobs" / "submit.sh", root / "jobs")
    (root / "jobs" / "setup.sh").write_text("exit 0\n")  # the .venv below is set up
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    for name, text in [("ray", RAY), ("python", f'#!/bin/sh\nexec {sys.executable} "$@"\n')]:
        (venv / name).write_text(text)
        (venv / name).chmod(0o755)
    (root / "spec.yaml").write_text("name: tiny-submit\n")
    calls = tmp_path / "calls.txt"
    # neither an address nor an auth mode from this process: an in-process ray.init of an
    # earlier test on this worker leaves RAY_AUTH_MODE=token in os.environ
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env |= {"RAY_CALLS": str(calls), "RAY_STATUS": str(status)}
    env |= {"RAY_ADDRESS": address} if address else {}
    proc = subprocess.run(
        ["bash", "jobs/submit.sh", "spec.yaml"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, calls.read_text().splitlines()


def test_no_head_running_starts_a_local_one_then_submits_to_it(tmp_path):
    out, calls = submit(tmp_path, status=1)
    cores = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    assert "submit: starting a local Ray head (stop it later with: ray stop)" in out
    assert calls[0] == "ray status | auth= address="
    assert calls[1] == (
        f"ray start --head --node-ip-address=127.0.0.1 --num-cpus={cores} "
        "--dashboard-host=127.0.0.1 --disable-usage-stats | auth=disabled address="
    )
    root = tmp_path / "repo"
    job = f"-- {root}/.venv/bin/python jobs/study.py --spec {root}/spec.yaml --out {root}/runs"
    assert calls[2].startswith("ray job submit --submission-id rankstudy-tiny-submit-")
    assert f"{job}/tiny-submit | auth= address=http://127.0.0.1:8265" in calls[2]
    assert len(calls) == 3


@pytest.mark.parametrize("status, address", [(0, None), (1, "http://10.0.0.5:8265")])
def test_a_running_head_or_a_given_address_is_used_as_it_is(tmp_path, status, address):
    out, calls = submit(tmp_path, status, address)
    assert "starting a local Ray head" not in out
    assert not any(c.startswith("ray start") for c in calls)
    assert calls[-1].endswith(f"address={address or 'http://127.0.0.1:8265'}")
    assert ("ray status | auth= address=" in calls) == (address is None)
