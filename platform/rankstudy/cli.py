"""The `rankstudy` command: `demo`, and `trial` (one arm, no Ray Tune)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _trial(args: argparse.Namespace) -> int:
    import yaml

    from rankstudy.arms import parse_arm
    from rankstudy.spec import SpecError, load_spec

    try:  # validate everything before any compute starts
        spec = load_spec(args.spec, args.set)
        parse_arm(args.arm, spec)
    except (SpecError, ValueError) as e:
        print(f"rankstudy trial: invalid input\n{e}", file=sys.stderr)
        return 2
    from rankstudy.trial import TrialFailed, run_trial

    out = Path(args.out or f"runs/{spec.name}/{args.arm}")
    config = {
        "spec": yaml.safe_load(Path(args.spec).read_text()),
        "arm": args.arm,
        "out_dir": str(out),
        "overrides": list(args.set),
    }
    try:
        result = run_trial(config)
    except TrialFailed as e:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(
            json.dumps({"status": "failed", "arm": args.arm, "failure": str(e)}, indent=2)
        )
        print(f"rankstudy trial: FAILED: {e}", file=sys.stderr)
        return 1
    curve = "  ".join(f"r={k}: {v:.3f}" for k, v in result["scores"].items())
    print(
        f"{args.arm}: test {curve}  AURAC log2 {result['aurac']['log2']:.3f} "
        f"linear {result['aurac']['linear']:.3f}\nwrote {out / 'result.json'}"
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rankstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a one-minute rank study on the planted task (CPU)")
    demo.add_argument("--max-rank", type=int, default=16)
    demo.add_argument("--steps", type=int, default=150)
    demo.add_argument("--shift", type=float, default=0.5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo")
    trial = sub.add_parser("trial", help="train and score one arm (no Ray Tune)")
    trial.add_argument("--spec", required=True, help="study spec YAML")
    trial.add_argument(
        "--arm",
        required=True,
        help="lora_r<rank>, dylora, matryoshka, matryoshka_binary, nested_multiloss",
    )
    trial.add_argument("--out", help="output dir (default runs/<study>/<arm>)")
    trial.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. training.lr=1e-3 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        import torch

        from rankstudy.demo import run_demo

        torch.set_num_threads(1)
        run_demo(args.max_rank, args.steps, args.shift, args.seed, args.out)
    elif args.command == "trial":
        sys.exit(_trial(args))


if __name__ == "__main__":
    main()
