"""A trial's start-up cost of DeepSpeed's CPU comm op, before and after rankstudy pins the ninja.

torch JIT-builds the op with the first `ninja` on PATH. Where two ninjas of different versions
are reachable (a system one, and the venv's from pip) they hash the build log differently, and
processes that find different ones rebuild the op for each other. This runs fresh processes
that alternate between the two PATH orders, as a shell-started driver and a Ray worker did,
into an empty extension folder: first loading the op as DeepSpeed does alone ("before"), then
with rankstudy.model.engine imported first ("after"). Seconds per process, side by side.

    .venv/bin/python benchmarks/comm_op_startup.py [--processes 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ninja

LOAD = "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
PINNED = "import rankstudy.model.engine; " + LOAD


def load(code: str, path: str, extensions: str) -> tuple[float, bool]:
    """(seconds, whether the process compiled the op) for one fresh process."""
    env = os.environ | {"PATH": path, "TORCH_EXTENSIONS_DIR": extensions}
    op = Path(extensions) / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    before = op.stat().st_mtime_ns if op.exists() else None
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return time.perf_counter() - start, op.stat().st_mtime_ns != before


def run(code: str, paths: list[str], processes: int) -> list[tuple[float, bool]]:
    with tempfile.TemporaryDirectory() as extensions:
        return [load(code, paths[i % 2], extensions) for i in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    args = parser.parse_args()
    rest = [p for p in os.environ["PATH"].split(os.pathsep) if p != ninja.BIN_DIR]
    system = shutil.which("ninja", path=os.pathsep.join(rest))
    venv = str(Path(ninja.BIN_DIR) / "ninja")
    versions = {
        n: subprocess.run([n, "--version"], capture_output=True, text=True).stdout.strip()
        for n in filter(None, [system, venv])
    }
    print("ninjas:", ", ".join(f"{n} {v}" for n, v in versions.items()))
    if system is None:
        print("only the venv's ninja is reachable here: nothing alternates, before = after")
    paths = [os.pathsep.join(rest), os.pathsep.join([ninja.BIN_DIR, *rest])]
    before = run(LOAD, paths, args.processes)
    after = run(PINNED, paths, args.processes)
    print("process  first ninja on PATH   before (s)          after (s)")
    for i, ((b, b_built), (a, a_built)) in enumerate(zip(before, after, strict=True)):
        first = f"system {versions[system]}" if i % 2 == 0 and system else f"venv {versions[venv]}"
        b_note, a_note = ("built" if x else "reused" for x in (b_built, a_built))
        print(f"{i + 1:>7}  {first[:19]:<19}  {b:>8.1f} {b_note:<8}  {a:>8.1f} {a_note}")
    later_b, later_a = (sum(t for t, _ in runs[1:]) for runs in (before, after))
    print(
        f"after the first build: {later_b:.1f} s before, {later_a:.1f} s after "
        f"({later_b / max(later_a, 1e-9):.1f}x); builds: "
        f"{sum(x for _, x in before)} before, {sum(x for _, x in after)} after"
    )


if __name__ == "__main__":
    main()
