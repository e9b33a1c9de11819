"""How much of a study's time goes to training and evaluation, and how much to the rest: Ray
and Tune start-up and scheduling, process and DeepSpeed set-up, MLflow and bookkeeping.

    .venv/bin/python benchmarks/study_overhead.py [--spec jobs/specs/planted-cpu.yaml]
    .venv/bin/python benchmarks/study_overhead.py --from runs/planted-cpu   # a finished study

Runs the study (a private local Ray) unless --from names a finished one, then prints:
- the study's wall time;
- outside share of the machine: 1 - (sum over every trial run of train + eval seconds) /
  (wall x trial slots), slots = CPUs / CPUs per trial;
- outside share inside trials: (trial wall - train - eval) / trial wall, summed over trials.
Target (issue 4): the outside share of the machine at most 15%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rankstudy.core.summaries import read_study_summary

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="jobs/specs/planted-cpu.yaml")
    parser.add_argument("--from", dest="done", help="a finished study's output directory")
    parser.add_argument("--slots", type=int, default=os.cpu_count())
    args = parser.parse_args()
    out = Path(args.done) if args.done else Path(tempfile.mkdtemp(prefix="overhead-")) / "study"
    if not args.done:
        subprocess.run(
            [
                sys.executable,
                "jobs/study.py",
                "--spec",
                args.spec,
                "--out",
                str(out),
                "--address",
                "local",
            ],
            cwd=ROOT,
            check=True,
        )
    summary = read_study_summary(out)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/*/result.json"))]
    useful = sum(r["cost"]["train_seconds"] + r["cost"]["eval_seconds"] for r in results)
    inside = sum(r["cost"]["wall_seconds"] for r in results)
    wall = summary.wall_seconds
    print(
        f"study {summary.study}: {len(results)} trial runs, wall {wall:.1f} s on {args.slots} slots"
    )
    print(f"  training + evaluation: {useful:.1f} s   trial wall: {inside:.1f} s")
    print(
        f"  outside share of the machine: {1 - useful / (wall * args.slots):.1%}  (target <= 15%)"
    )
    print(f"  outside share inside trials:  {1 - useful / inside:.1%}")


if __name__ == "__main__":
    main()
