"""`rankstudy plan`: the numbers of both shipped specs checked against a hand calculation, the
calibration run, `jobs/study.py --dry-run`, and a clear error when the model cannot be read."""

import json
import math
import re

import pytest

from rankstudy.commands.cli import main
from rankstudy.core.spec import load_spec
from rankstudy.study.plan import add_time, plan, published_split_sizes, shape_of, split_sizes
from studies import ROOT, study_job

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
S = [1, 2, 4, 8, 16, 32]

# Llama-3.2-1B, by hand from its published config: 16 layers, hidden 2048, 32 query heads and
# 8 key/value heads of 64, MLP 8192, vocabulary 128256 (lm_head tied to the embedding).
LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
LAYER = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192  # q, o; k, v; gate, up, down
N = 16 * LAYER + 2048 * 128256  # matmul weights, lm_head included
W = 16 * ((2048 + 2048) * 2 + (2048 + 512) * 2 + (2048 + 8192) * 3)  # adapter params per rank
ATTN = 16 * 2048  # layers x attention width


def train(tokens, seq, r, n=N, w=W, attn=ATTN):
    """Per token: frozen base forward + activation grads (2 x 2N), adapters forward and both
    grads (3 x 2rW), attention QK^T and AV forward and backward (3 x 4 L A seq)."""
    return tokens * (4 * n + 6 * r * w + 12 * attn * seq)


def forward(tokens, seq, r, n=N, w=W, attn=ATTN):
    return tokens * (2 * n + 2 * r * w + 4 * attn * seq)


@pytest.fixture
def llama_dir(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(LLAMA_1B))
    return tmp_path / "llama"


def test_paper_spec_by_hand(llama_dir):
    spec = load_spec(
        ROOT / "jobs" / "specs" / "gsm8k-llama-3.2-1b.yaml",
        [f"model.name={llama_dir}", f"task.path={GSM8K}"],
    )
    sizes = split_sizes(spec)
    assert sizes == {"train": 7473 - 200, "validation": 200, "test": 1319}
    out = plan(spec, shape_of(spec), sizes)
    steps = math.ceil(3 * 7273 / (8 * 4))  # 3 epochs at a global batch of 32
    tokens = steps * 32 * 1024  # max_length tokens per example: an upper bound
    assert (out["steps_per_trial"], out["tokens_per_trial"]) == (682, tokens)
    # 6 LoRA arms, dylora, matryoshka (both rules), nested_multiloss: 2 trials each
    assert out["total"]["training_runs"] == 18 and out["total"]["test_passes"] == 10
    val, test = 200 * 1024, 1319 * 1024
    grid = sum(
        2 * (train(tokens, 1024, r) + forward(val, 1024, r)) + forward(test, 1024, r) for r in S
    )
    assert out["methods"]["lora_grid"]["flops"] == pytest.approx(grid, rel=1e-12)
    # matryoshka trials also score truncated_p (for matryoshka_truncated_p): the paper's rule
    # pays its search, its own scoring and its own test pass, as the study charges it
    mat = 2 * (train(tokens, 1024, 32) + sum(forward(val, 1024, r) for r in S))
    mat += sum(forward(test, 1024, r) for r in S)
    assert out["methods"]["matryoshka"]["flops"] == pytest.approx(mat, rel=1e-12)
    assert out["arms"]["matryoshka"]["flops"] == pytest.approx(
        2 * (train(tokens, 1024, 32) + 2 * sum(forward(val, 1024, r) for r in S))
        + 2 * 2 * sum(forward(test, 1024, r) for r in S)  # the arm: both rules, a pass each
    )
    assert out["matryoshka_over_lora_grid"] == pytest.approx(mat / grid, rel=1e-12)
    nested = 2 * (sum(train(tokens, 1024, r) for r in S) + sum(forward(val, 1024, r) for r in S))
    nested += sum(forward(test, 1024, r) for r in S)
    assert out["methods"]["nested_multiloss"]["flops"] == pytest.approx(nested, rel=1e-12)

    add_time(out, spec, shape_of(spec), "L40S", 5000.0)  # price 2.5 a device-hour in the spec
    per_second = 5000.0 * train(1, 1024, 32)
    hours = grid / per_second / 3600
    assert out["methods"]["lora_grid"]["device_hours"] == pytest.approx(hours)
    assert out["methods"]["lora_grid"]["money"] == pytest.approx(2.5 * hours)


def test_planted_default_by_hand(capsys):
    spec = load_spec(ROOT / "jobs" / "specs" / "planted-cpu.yaml")
    shape = shape_of(spec)
    out = plan(spec, shape, split_sizes(spec))
    t, task = spec.training, spec.task
    tokens = t.steps * t.micro_batch_size * t.grad_accum * task.seq_len
    assert out["tokens_per_trial"] == tokens
    n, w, attn, seq = shape.matmul_params, shape.adapter_width, shape.layers * shape.attn_dim, 32
    assert task.seq_len == seq
    val, test = task.validation_size * seq, task.test_size * seq
    grid = sum(
        2 * (train(tokens, seq, r, n, w, attn) + forward(val, seq, r, n, w, attn))
        + forward(test, seq, r, n, w, attn)
        for r in S
    )
    assert out["methods"]["lora_grid"]["flops"] == pytest.approx(grid, rel=1e-12)
    with pytest.raises(SystemExit) as done:
        main(["plan", "--spec", str(ROOT / "jobs" / "specs" / "planted-cpu.yaml")])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "20 training runs and 17 test passes" in printed  # the svd rules' passes too
    assert f"matryoshka / lora_grid cost: {out['matryoshka_over_lora_grid']:.3f}" in printed


def test_calibration_measures_this_machine(tmp_path):
    spec = ROOT / "jobs" / "specs" / "planted-cpu.yaml"
    with pytest.raises(SystemExit) as done:
        main(["plan", "--spec", str(spec), "--calibrate", "5", "--json", str(tmp_path / "p.json")])
    assert done.value.code == 0
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["throughput"]["device"] == "cpu" and out["throughput"]["tokens_per_second"] > 0
    assert out["total"]["device_hours"] > 0 and "money" not in out["total"]


def test_dry_run_plans_and_starts_nothing(tmp_path):
    out = tmp_path / "study"
    proc = study_job(out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "20 training runs and 17 test passes" in proc.stdout
    assert not out.exists()


def test_unreadable_model_is_a_clear_error(tmp_path, capsys):
    spec = ROOT / "jobs" / "specs" / "gsm8k-llama-3.2-1b.yaml"
    with pytest.raises(SystemExit) as done:
        main(["plan", "--spec", str(spec), "--set", f"model.name={tmp_path / 'none'}"])
    assert done.value.code == 2
    assert "rankstudy plan: invalid input" in capsys.readouterr().err


def test_smollm2_spec_is_planned_from_its_gguf_header():
    """The GGUF file's header gives the shape, without dequantising: 30 layers of q and o
    576 x 576, k and v 576 x 192 (3 KV heads of 64), MLP 3 x 576 x 1536, and the tied lm_head
    576 x 49152; the adapters cover q, k, v and o."""
    spec = load_spec(ROOT / "jobs" / "specs" / "smollm2-gsm8k-cpu.yaml")
    shape = shape_of(spec)
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert shape.matmul_params == 30 * per_layer + 576 * 49152 == 134_479_872
    assert shape.layers == 30 and shape.attn_dim == 576
    assert shape.adapter_width == 30 * (2 * (576 + 576) + 2 * (576 + 192))
    sizes = split_sizes(spec)
    assert sizes == {"train": 7473 - 24, "validation": 24, "test": 48}
    out = plan(spec, shape, sizes)
    assert set(out["methods"]) == set(spec.methods)


def test_planned_flops_and_tokens_are_what_a_trial_records(tmp_path):
    """The README's claim that the plan's FLOPs are what the study records, per trial: with
    one search trial per arm and one seed, an arm's planned FLOPs are those of one trial run
    whole (validations every 3 steps under its own rule, at the end under every rule, then the
    test pass), as it records them, for every method of the registry."""
    from rankstudy.core.methods import METHODS
    from rankstudy.core.spec import parse_spec
    from rankstudy.trial.lifecycle import run_trial
    from studies import SMALL

    raw = SMALL | {
        "training": SMALL["training"] | {"steps": 6, "eval_every": 3, "checkpoint_every": 0},
        # every method; matryoshka's trials also scored under truncated_p, at the end only
        "methods": ["lora_grid", *(m for m in METHODS if m != "lora"), "matryoshka_truncated_p"],
        "search": {"trials_per_arm": 1},
    }
    spec = parse_spec(raw)
    planned = plan(spec, shape_of(spec), split_sizes(spec))
    for arm in ("lora_r2", *(m for m in METHODS if m != "lora")):
        config = {"spec": raw, "arm": arm, "out_dir": str(tmp_path / arm), "overrides": []}
        recorded = run_trial(config).wire()["cost"]
        assert recorded["train_tokens"] == planned["tokens_per_trial"]
        if arm != "matryoshka":
            assert recorded["flops"] == pytest.approx(planned["arms"][arm]["flops"], rel=1e-12)
            continue
        # two rules: each served method pays the training and its own rule's scoring (the
        # study gives each its own test pass; this one trial ran one, scoring both)
        for method, rule in [("matryoshka", "scaled"), ("matryoshka_truncated_p", "truncated_p")]:
            mine = recorded["train_flops"] + recorded["eval_by_rule"][rule]["flops"]
            assert mine == pytest.approx(planned["methods"][method]["flops"], rel=1e-12), method


def test_the_paper_protocol_plans_offline(monkeypatch, capsys):
    """The GPU spec of the reference protocol: the model's shape from the config the spec ships
    (its architecture equals the Llama-3.2-1B figures above), the hub's GSM8K from its
    published row counts, with no hub in reach."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = ROOT / "jobs" / "specs" / "paper-protocol-llama-3.2-1b.yaml"
    spec = load_spec(path)
    shape = shape_of(spec)
    assert shape.matmul_params == N and shape.adapter_width == W
    assert published_split_sizes(spec) == {"train": 7473 - 200, "validation": 200, "test": 1319}
    out = plan(spec, shape, published_split_sizes(spec))
    assert out["steps_per_trial"] == 682 == math.ceil(3 * 7273 / 32)  # 3 epochs at 32
    with pytest.raises(SystemExit) as done:
        main(["plan", "--spec", str(path)])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "8 arms" in printed and "682 steps" in printed


def test_the_smollm2_protocol_spec_plans_from_its_gguf_header():
    spec = load_spec(ROOT / "jobs" / "specs" / "paper-protocol-smollm2.yaml")
    assert (spec.task.answer_match, spec.task.shots, spec.deepspeed.precision) == (
        "strict",
        3,
        "bf16_pure",
    )
    out = plan(spec, shape_of(spec), split_sizes(spec))
    assert set(out["methods"]) == set(spec.methods)
    assert out["steps_per_trial"] == 12


def test_published_sizes_are_cut_as_the_task_cuts_real_rows():
    """The hub's sizes as counted offline equal the real files' (../shared holds the hub's
    GSM8K) under the same holdout and limits."""
    spec = load_spec(ROOT / "jobs" / "specs" / "smollm2-gsm8k-cpu.yaml", ["task.max_eval=null"])
    assert published_split_sizes(spec) == split_sizes(spec)
    limited = load_spec(ROOT / "jobs" / "specs" / "smollm2-gsm8k-cpu.yaml", ["task.max_train=100"])
    assert published_split_sizes(limited) == split_sizes(limited)


def test_a_budget_sweep_is_planned_point_by_point(capsys):
    """The README's `rankstudy plan` on the budget sweep: one plan per budget, each at its
    multiple of the 300 steps, its tokens a trial in proportion."""
    path = ROOT / "jobs" / "specs" / "planted-budget-sweep.yaml"
    with pytest.raises(SystemExit) as done:
        main(["plan", "--spec", str(path)])
    assert done.value.code == 0
    heads = re.findall(
        r"^\[budget([\d.]+)\] study planted-budget-sweep-budget\1: 12 arms, .* "
        r"(\d+) steps x ([\d,]+) tokens a trial$",
        capsys.readouterr().out,
        re.MULTILINE,
    )
    assert [(b, int(s)) for b, s, _ in heads] == [
        ("0.25", 75),
        ("0.5", 150),
        ("1", 300),
        ("2", 600),
        ("4", 1200),
    ]
    assert {int(t.replace(",", "")) // int(s) for _, s, t in heads} == {1024}  # tokens a step


def lines(name: str) -> int:
    """The problems of a GSM8K file, counted as its lines (one JSON object a line)."""
    return sum(1 for line in (GSM8K / name).read_text(encoding="utf-8").splitlines() if line)


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the spec's own: validation 24, max_eval 48
        ["task.max_eval=null"],
        ["task.max_train=100", "task.validation_size=7", "task.max_eval=5"],
    ],
)
def test_gsm8k_sizes_are_the_files_line_counts_cut_by_hand_and_what_the_task_builds(overrides):
    """The plan's sizes against two counts that do not go through its helper: the files'
    lines held out and cut by hand (validation comes out of train; max_train and max_eval
    keep the first rows), and the splits of the task a trial builds (with the byte tokenizer:
    a tokenizer never decides a split)."""
    from rankstudy.model.build import build_task
    from rankstudy.model.tokenizer import byte_tokenizer

    path = ROOT / "jobs" / "specs" / "smollm2-gsm8k-cpu.yaml"
    spec = load_spec(path, [*overrides, "task.chat_template=false"])  # bytes have no template
    t = spec.task
    assert (lines("train.jsonl"), lines("test.jsonl")) == (7473, 1319)  # the hub's sizes
    by_hand = {
        "train": min(7473 - t.validation_size, t.max_train or 7473),
        "validation": min(t.validation_size, t.max_eval or 7473),
        "test": min(1319, t.max_eval or 1319),
    }
    task = build_task(spec, None, byte_tokenizer(), None, seed=spec.seed)
    built = {split: task.size(split) for split in by_hand}
    assert split_sizes(spec) == by_hand == built
    assert published_split_sizes(spec) == by_hand
