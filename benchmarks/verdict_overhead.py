"""What the svd rules and the paired bootstrap add to a study, measured side by side.

- SVD factors: rankstudy.adapters.svd.prepare_svd on every adapted layer (once per trial
  evaluation), against one forward over the default study's test split at one rank: the
  factors cost a fraction of a single scoring pass.
- Scoring under svd against scoring under the paper's rule, at the same rank, interleaved
  rounds: an svd pass costs what any pass costs (the factors are rank-k LoRA factors).
- The bootstrap: rankstudy.core.verdict.study_verdict over a finished study's chosen results (the
  default study's by default), B = the spec's resamples.

    .venv/bin/python benchmarks/verdict_overhead.py [--study runs/planted-cpu] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rankstudy.adapters import adapter_layers, set_rank
from rankstudy.adapters.svd import prepare_svd
from rankstudy.core.arms import parse_arm
from rankstudy.core.spec import load_spec
from rankstudy.model.build import attach_arm, build_task, load_model
from rankstudy.trial.evaluation import score_examples

SPEC = "jobs/specs/planted-cpu.yaml"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def trained_model(spec):
    """The default study's base with a Matryoshka arm's adapters moved off B = 0."""
    model, tokenizer, _ = load_model(spec.model, torch.float32)
    arm = parse_arm("matryoshka", spec)
    task = build_task(spec, model, tokenizer, arm, spec.seed)
    attach_arm(model, spec, arm)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    return model.eval(), task


def adapters_and_scoring(rounds: int) -> None:
    spec = load_spec(SPEC, [])
    model, task = trained_model(spec)
    layers = adapter_layers(model)
    batch = spec.training.eval_batch_size
    prep, scaled, svd = [], [], []
    for _ in range(rounds):
        for layer in layers.values():  # force a recomputation each round
            layer.svd_version = None
        prep.append(timed(lambda: prepare_svd(layers)))
        set_rank(model, 8, "scaled")
        scaled.append(timed(lambda: score_examples(model, task, "test", batch)))
        set_rank(model, 8, "svd")
        svd.append(timed(lambda: score_examples(model, task, "test", batch)))
    p, a, b = (statistics.median(x) for x in (prep, scaled, svd))
    print(f"SVD factors of {len(layers)} layers (R = {spec.adapters.max_rank}): {p * 1e3:.2f} ms")
    print(f"one test pass at rank 8: scaled {a * 1e3:.1f} ms, svd {b * 1e3:.1f} ms")
    print(f"ratios: factors / one pass {p / a:.3f}; svd pass / scaled pass {b / a:.3f}")


def bootstrap(study: Path) -> None:
    from rankstudy.core.verdict import study_verdict
    from rankstudy.study.state import StudyFiles
    from rankstudy.study.summary import chosen_results, score_methods

    spec = load_spec(SPEC, [])
    seeds = spec.seeds or [spec.seed]
    files = StudyFiles(spec, study.resolve(), resume=True)
    chosen, missing = chosen_results(spec, files, seeds)
    methods, _, _ = score_methods(spec, files, chosen, missing, seeds, lambda _: None)
    seconds = timed(lambda: study_verdict(spec, methods, chosen, seeds, print))
    print(
        f"bootstrap of {len(methods)} methods, B = {spec.verdict.resamples}, "
        f"{spec.task.test_size} test examples: {seconds:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("runs/planted-cpu"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    adapters_and_scoring(args.rounds)
    if (args.study / "study_state.json").is_file():
        bootstrap(args.study)
    else:
        print(f"bootstrap: skipped ({args.study} holds no finished study)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
