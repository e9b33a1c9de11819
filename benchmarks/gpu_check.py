"""The GPU path in one short run: a tiny trial end to end (bf16, ZeRO-2, the study's own trial
code), a few steps of the SmolLM2-135M GSM8K spec's trial in bf16 (the real pretrained model,
dequantised from its GGUF file), then training throughput of a 1B-class Llama built locally
(Llama-3.2-1B's shape, random weights, nothing downloaded): tokens/s and model FLOPs
utilisation for the LoRA and Matryoshka arms, measured side by side in one DeepSpeed engine
each.

    .venv/bin/python benchmarks/gpu_check.py              # on a GPU machine
    .venv/bin/python benchmarks/gpu_check.py --small      # the same code on a CPU, small sizes

MFU is model FLOPs (rankstudy.core.cost, the numbers the study records) per second over the
device's dense bf16 peak (--peak-tflops, else a table of known GPUs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from rankstudy.core.cost import train_flops
from rankstudy.core.records import TrialConfig
from rankstudy.core.spec import read_spec_file
from rankstudy.model.engine import init_distributed, use_gpu
from rankstudy.tasks.base import Task
from rankstudy.trial.lifecycle import Trial, run_trial

SPEC = "jobs/specs/planted-cpu.yaml"
SMOLLM2_SPEC = "jobs/specs/smollm2-gsm8k-cpu.yaml"
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=4096,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)
SMALL = dict(LLAMA_1B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, vocab_size=512)


def spec_trial(spec: str, gpu_overrides: list[str], steps: int, extra: list[str] = ()) -> dict:
    """result.json's object of the spec's matryoshka arm, run through run_trial here."""
    with tempfile.TemporaryDirectory() as out:
        config = {"spec": read_spec_file(spec), "arm": "matryoshka", "out_dir": out}
        config["overrides"] = [*gpu_overrides, f"training.steps={steps}", *extra]
        return run_trial(config).wire()


class RandomTokens(Task):
    """Random token sequences of one length, the inputs their own labels: a throughput workload
    for the trial's training step (nothing to learn, nothing scored)."""

    def __init__(self, vocab: int, seq: int, n: int = 1024) -> None:
        self.tokens = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def size(self, split: str) -> int:
        return len(self.tokens)

    def collate(self, split: str, indices) -> dict[str, torch.Tensor]:
        batch = self.tokens[list(indices)]
        return {"input_ids": batch, "labels": batch}

    def loss(self, model, batch) -> torch.Tensor:
        return model(**batch).loss

    def score_examples(self, model, split, indices, batch_size) -> dict[str, list[float]]:
        raise NotImplementedError("a throughput workload: nothing to score")


def throughput(overrides: list[str], arm_name: str, sizes: dict, seq: int, steps: int) -> dict:
    """The arm's training steps (the study's Trial.train_step) on a Llama of `sizes`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    with tempfile.TemporaryDirectory() as out:
        config = {"spec": read_spec_file(SPEC), "arm": arm_name, "out_dir": out}
        trial = Trial(TrialConfig.of(config | {"overrides": overrides}))
        gpu = use_gpu(trial.spec)
        if gpu:
            torch.cuda.reset_peak_memory_stats()  # this arm's peak, not the previous one's
        device = torch.device("cuda" if gpu else "cpu")
        with device:
            model = AutoModelForCausalLM.from_config(
                LlamaConfig(**sizes, attn_implementation="sdpa"),
                dtype=torch.bfloat16 if gpu else torch.float32,
            )
        trial.setup(model=model, task=RandomTokens(sizes["vocab_size"], seq))
        trial.engine.train()
        times = []
        for i in range(steps + 2):  # two warm-up steps
            tic = time.perf_counter()
            trial.train_step()  # ends in an all-reduce of its loss: the device has finished
            if i >= 2:
                times.append(time.perf_counter() - tic)
        batch = trial.spec.training.micro_batch_size
        arm, shape = trial.arm, trial.shape
        trial.close()
    step = statistics.median(times)
    flops = train_flops(shape, batch * seq, seq, arm.method, arm.max_rank, arm.train_ranks)
    out = {
        "arm": arm_name,
        "tokens_per_s": batch * seq / step,
        "tflops_per_s": flops / step / 1e12,
        "ms_per_step": 1000 * step,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
    }
    if gpu:
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    overrides = ["resources.use_gpu=true", "deepspeed.zero_stage=2"]
    overrides += ["deepspeed.precision=bf16"] if on_gpu else []
    init_distributed(on_gpu)
    print(f"device: {name}; torch {torch.__version__}")

    precision = "bf16" if on_gpu else "fp32"
    # --small: the same code on a few examples (the CPU smoke run of the test suite)
    tiny_eval = ["task.validation_size=64", "task.test_size=64"] if args.small else []
    trial = spec_trial(SPEC, overrides, 30 if args.small else 300, tiny_eval)
    cost = trial["cost"]
    print(
        f"tiny trial (planted, matryoshka, {cost['device_type']}, ZeRO-2, {precision}): "
        f"AURAC log2 {trial['aurac']['log2']:.3f}, "
        f"{cost['train_tokens'] / cost['train_seconds']:,.0f} train tokens/s"
    )
    small_eval = ["task.validation_size=2", "task.max_eval=2"] if args.small else []
    # 135 M on a CPU: half a step's problems, and the paper's rule alone scored (evaluating
    # three rules was most of its time; tests/e2e/test_smollm2.py scores every rule)
    small_eval += ["training.micro_batch_size=2", "adapters.inference_rules=[scaled]"] * args.small
    smol = spec_trial(SMOLLM2_SPEC, overrides, 2 if args.small else 40, small_eval)
    print(
        f"SmolLM2-135M GSM8K trial (matryoshka, {smol['cost']['device_type']}, ZeRO-2, "
        f"{precision}): test {smol['metric']} by rank {smol['scores']}, "
        f"{smol['cost']['train_tokens'] / smol['cost']['train_seconds']:,.0f} train tokens/s"
    )

    big = [
        *overrides,
        "training.micro_batch_size=8",
        "adapters.max_rank=64",
        "adapters.train_ranks=[1,2,4,8,16,32,64]",
        'adapters.target_modules=["q_proj","k_proj","v_proj","o_proj",'
        '"gate_proj","up_proj","down_proj"]',
    ]
    sizes, seq = (SMALL, 64) if args.small else (LLAMA_1B, 1024)
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows = [throughput(big, a, sizes, seq, args.steps) for a in ("lora_r64", "matryoshka")]
    print(f"{'1B-class' if not args.small else 'small'} Llama, batch 8 x {seq}, ZeRO-2:")
    for r in rows:
        r["mfu"] = r["tflops_per_s"] / peak if peak else None
        mfu = f"{r['mfu']:.1%}" if peak else "n/a (no peak known)"
        memory = f", peak {r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] else ""
        print(
            f"  {r['arm']:<11} {r['tokens_per_s']:>10,.0f} tokens/s  {r['ms_per_step']:8.1f} ms"
            f"/step  {r['tflops_per_s']:7.1f} TFLOP/s  MFU {mfu}{memory}"
        )
    print(f"  matryoshka / lora step time: {rows[1]['ms_per_step'] / rows[0]['ms_per_step']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            figures = {"device": name, "tiny_trial": cost, "smollm2_trial": smol["cost"]}
            json.dump(figures | {"throughput": rows}, f, indent=2)


if __name__ == "__main__":
    main()
