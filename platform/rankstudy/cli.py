"""The `rankstudy` command."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rankstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a one-minute rank study on the planted task (CPU)")
    demo.add_argument("--max-rank", type=int, default=16)
    demo.add_argument("--steps", type=int, default=150)
    demo.add_argument("--shift", type=float, default=0.5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo")
    args = parser.parse_args(argv)
    if args.command == "demo":
        import torch

        from rankstudy.demo import run_demo

        torch.set_num_threads(1)
        run_demo(args.max_rank, args.steps, args.shift, args.seed, args.out)


if __name__ == "__main__":
    main()
