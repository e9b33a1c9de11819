"""How long the report takes to build for a large study, and how big the page is.

Fills a sqlite MLflow store through the platform's tracking module (the calls a study makes)
with 10 methods x 10 ranks x 3 seeds x 20 trials per arm, 500 logged steps per trial, then
builds the report from it several times. Targets (issue 5): under 5 s of build time and a page
under 5 MB.

    .venv/bin/python benchmarks/report_build.py [--repeats 3] [--dir /tmp/report-bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rankstudy_report import build_report
from report_store import fill_study

SHAPE = {"methods": 10, "ranks": [2**i for i in range(10)], "seeds": [0, 1, 2], "trials": 20}
STEPS = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the store and report go")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="report-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tic = time.perf_counter()
    fill_study(
        uri, "large", SHAPE["methods"], SHAPE["ranks"], SHAPE["seeds"], SHAPE["trials"], STEPS
    )
    print(f"filled the store in {time.perf_counter() - tic:.1f} s: {SHAPE}, {STEPS} steps/trial")
    times = []
    for i in range(args.repeats):
        tic = time.perf_counter()
        page = build_report(uri, root / "report", experiment="large", log=False)
        times.append(time.perf_counter() - tic)
        print(f"build {i + 1}/{args.repeats}: {times[-1]:.2f} s")
    size = page.stat().st_size / 1e6
    median = statistics.median(times)
    print(f"report build: median {median:.2f} s (target < 5 s, {median / 5:.0%} of it)")
    print(f"page: {size:.2f} MB (target < 5 MB, {size / 5:.0%} of it): {page}")


if __name__ == "__main__":
    main()
