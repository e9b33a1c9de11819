"""Training throughput of the real-model trial on this CPU: SmolLM2-135M-Instruct on GSM8K,
through the study's own trial code (rankstudy.trial.lifecycle.run_trial, DeepSpeed, fp32),
against this CPU's measured fp32 matrix-multiply rate, timed in the same run.

    .venv/bin/python benchmarks/smollm2_throughput.py [--steps 12] [--arm lora_r16] [--threads 1]

Model FLOP/s are the training FLOPs rankstudy.core.cost records for the trial (4 N T for the frozen
base, 6 N_adapter T, attention) over its training seconds. The GEMM rate is the median of
square fp32 matmuls (2048) on the same number of threads, timed before and after the trial.
Target: model FLOP/s at least 60 % of the GEMM rate.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from rankstudy.core.spec import read_spec_file
from rankstudy.trial.lifecycle import run_trial

SPEC = "jobs/specs/smollm2-gsm8k-cpu.yaml"


def gemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tic)
    return 2 * n**3 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--arm", default="lora_r16")
    parser.add_argument("--threads", type=int, default=1, help="the trial's cpus_per_worker")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = gemm_gflops()
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"training.steps={args.steps}",
            f"resources.cpus_per_worker={args.threads}",
            "task.validation_size=4",
            "task.max_eval=4",
        ]
        config = {"spec": read_spec_file(SPEC), "arm": args.arm, "out_dir": out}
        result = run_trial(config | {"overrides": overrides})
    after = gemm_gflops()
    cost = result.cost
    rate = statistics.mean([before, after])
    model_gflops = cost.train_flops / cost.train_seconds / 1e9
    print(f"fp32 GEMM 2048^3 on {args.threads} thread(s): {before:.1f} / {after:.1f} GFLOP/s")
    print(
        f"SmolLM2-135M {args.arm}, {args.steps} steps: "
        f"{cost.train_tokens / cost.train_seconds:.1f} train tokens/s, "
        f"{model_gflops:.1f} model GFLOP/s = {model_gflops / rate:.1%} of the GEMM rate "
        f"(target >= 60 %)"
    )


if __name__ == "__main__":
    main()
