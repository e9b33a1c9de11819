"""The same learning-rate search with Ray Tune's ASHA (search.scheduler) and without: what each
arm chose and what its search spent.

    .venv/bin/python benchmarks/asha_search.py [--spec jobs/specs/planted-cpu.yaml]
        [--trials 8] [--steps 100] [--methods dylora matryoshka]

Runs the study twice (a private local Ray each), over lr in [1e-4, 1e-1] (log), with
`--steps` a trial and a validation every tenth of it; ASHA with grace period one validation
and reduction factor 3. Prints per arm: the chosen lr and its validation selection score,
then what the arm's search trials spent (FLOPs, device-seconds; stopped trials counted with
what they spent until stopped), and ASHA's share of it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(spec: str, out: Path, overrides: list[str]) -> None:
    sets = [a for o in overrides for a in ("--set", o)]
    command = [sys.executable, "jobs/study.py", "--spec", spec, "--out", str(out)]
    subprocess.run([*command, "--address", "local", *sets], cwd=ROOT, check=True)


def per_arm(out: Path) -> dict[str, dict]:
    """Arm -> its chosen lr and validation score, its search's FLOPs and device-seconds, and
    how many trials were stopped."""
    state = json.loads((out / "study_state.json").read_text())
    arms: dict[str, dict] = {}
    for t in state["trials"].values():
        arm = arms.setdefault(t["arm"], {"flops": 0.0, "device_s": 0.0, "stopped": 0})
        arm["stopped"] += t["status"] == "stopped"
        if t["status"] != "failed" and not t["superseded"]:
            cost = json.loads((Path(t["out_dir"]) / "result.json").read_text())["cost"]
            arm["flops"] += cost["flops"]
            arm["device_s"] += cost["device_seconds"]
    for test in state["tests"].values():
        searched = next(t for t in state["trials"].values() if t["out_dir"] == test["out_dir"])
        arms[test["arm"]] |= {
            "lr": test["params"]["training.lr"],
            "score": searched["selection_metric"],
        }
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="jobs/specs/planted-cpu.yaml")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=["dylora", "matryoshka"])
    args = parser.parse_args()
    every = max(1, args.steps // 10)
    common = [
        f"methods={json.dumps(args.methods)}",
        f"training.steps={args.steps}",
        f"training.eval_every={every}",
        f"training.checkpoint_every={args.steps}",
        f"search.trials_per_arm={args.trials}",
        'search.space={"training.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": true}}',
    ]
    asha = f'search.scheduler={{"kind": "asha", "grace_period": {every}, "reduction_factor": 3}}'
    root = Path(tempfile.mkdtemp(prefix="asha-search-"))
    run(args.spec, root / "full", common)
    run(args.spec, root / "asha", [*common, asha])
    full, halved = per_arm(root / "full"), per_arm(root / "asha")
    print(f"\n{args.trials} trials an arm, {args.steps} steps, lr in [1e-4, 1e-1]; {root}")
    print(
        f"{'arm':<12}{'lr (full)':>11}{'val':>7}{'lr (ASHA)':>11}{'val':>7}{'stopped':>9}"
        f"{'FLOPs full':>12}{'FLOPs ASHA':>12}{'ratio':>7}{'dev-s full':>12}{'dev-s ASHA':>12}"
        f"{'ratio':>7}"
    )
    for arm, f in full.items():
        a = halved[arm]
        print(
            f"{arm:<12}{f['lr']:>11.2e}{f['score']:>7.3f}{a['lr']:>11.2e}{a['score']:>7.3f}"
            f"{a['stopped']:>9}{f['flops']:>12.2e}{a['flops']:>12.2e}"
            f"{a['flops'] / f['flops']:>7.2f}{f['device_s']:>12.1f}{a['device_s']:>12.1f}"
            f"{a['device_s'] / f['device_s']:>7.2f}"
        )


if __name__ == "__main__":
    main()
