"""The study spec: the shipped specs validate, and malformed ones fail with one clear error
naming the field, before anything starts."""

import copy
from pathlib import Path

import pytest
import yaml

from rankstudy.core.spec import SpecError, load_spec, parse_spec
from studies import ROOT, study_job

SPECS = sorted((ROOT / "jobs" / "specs").glob("*.yaml"))
BASE = yaml.safe_load((ROOT / "jobs" / "specs" / "planted-cpu.yaml").read_text())


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_shipped_specs_validate(path):
    spec = load_spec(path)
    assert spec.name == path.stem


def test_paper_setting_spec():
    spec = load_spec(ROOT / "jobs" / "specs" / "gsm8k-llama-3.2-1b.yaml")
    assert spec.model.name == "meta-llama/Llama-3.2-1B-Instruct" and spec.task.kind == "gsm8k"
    assert spec.adapters.max_rank == 32 and spec.adapters.rank_set == [1, 2, 4, 8, 16, 32]
    assert spec.adapters.scaling == "sqrt" and spec.training.lr == 8e-5
    assert spec.training.epochs == 3 and spec.training.micro_batch_size == 8
    assert spec.training.grad_accum == 4 and spec.deepspeed.precision == "bf16"
    assert spec.deepspeed.zero_stage == 2 and spec.resources.use_gpu
    assert len(spec.adapters.target_modules) == 7


def mutate(path: str, value):
    data = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(leaf)
    else:
        node[leaf] = value
    return data


DELETE = object()
MISSING_FILE = "/nonexistent/train.jsonl"

MALFORMED = [
    ("name", DELETE, "name: Field required"),
    ("name", "has space", "name: String should match pattern"),
    ("model", {}, "model: give exactly one of `name`"),
    ("model", {"name": "x", "tiny": {}}, "model: give exactly one of `name`"),
    ("model.tiny.hidden", "wide", "model.tiny.hidden: Input should be a valid integer"),
    ("model.tiny.family", "bert", "model.tiny.family: Input should be 'llama'"),
    ("model.flash", True, "model.flash: Extra inputs are not permitted"),
    ("model", {"name": "/no/such/model"}, "model.name: /no/such/model is not a folder"),
    ("model", {"name": str(ROOT / "README.md")}, "model.name: /"),
    ("model", {"name": "org/team/model"}, "model.name: 'org/team/model' is neither a local folder"),
    ("model", {"name": "my model"}, "model.name: 'my model' is neither a local folder nor a hub"),
    (
        "model.attn_implementation",
        "flash_attention_2",
        "model.attn_implementation: flash_attention_2 runs on CUDA GPUs only",
    ),
    (
        "model",
        {"name": "org/model", "config": "/nonexistent/config.json"},
        "model.config: /nonexistent/config.json is not a config.json, nor a folder holding one",
    ),
    (
        "model",
        {
            "tiny": {},
            "config": str(ROOT / "jobs" / "specs" / "models" / "llama-3.2-1b-instruct.json"),
        },
        "model: config: describes the architecture of a `name`; give `name` too",
    ),
    ("task.kind", "squad", "task: Input tag 'squad'"),
    ("task.shift", 0.0, "task.planted.shift: Input should be greater than 0"),
    ("task.shift", 1.5, "task.planted.shift: Input should be less than 1"),
    ("task.seq_len", 1, "task.planted.seq_len: Input should be greater than 1"),
    (
        "task",
        {"kind": "jsonl", "train": MISSING_FILE},
        "task.jsonl.train: no such file or directory: /nonexistent/train.jsonl",
    ),
    (
        "task",
        {"kind": "gsm8k", "path": "./no/such/dir"},
        "task.gsm8k.path: no such file or directory: ./no/such/dir",
    ),
    (
        "task",
        {"kind": "jsonl", "train": str(ROOT / "README.md"), "metric": "bleu"},
        "task.jsonl.metric: Input should be 'exact_match' or 'token_accuracy'",
    ),
    ("adapters.max_rank", 0, "adapters.max_rank: Input should be greater than 0"),
    ("adapters.train_ranks", [], "adapters: train_ranks: empty"),
    ("adapters.train_ranks", [4, 2, 1], "adapters: train_ranks: must be strictly increasing"),
    ("adapters.train_ranks", [1, 2, 64], "adapters: train_ranks: ranks must lie in 1..max_rank"),
    ("adapters.eval_ranks", [0, 2], "adapters: eval_ranks: ranks must lie in 1..max_rank"),
    ("adapters.scaling", "log", "adapters.scaling: Input should be 'none', 'rank' or 'sqrt'"),
    ("adapters.target_modules", [], "adapters: target_modules: empty"),
    ("adapters.inference_rules", ["scaled", "scaled"], "adapters: inference_rules: give each"),
    ("adapters.dropout", 1.0, "adapters.dropout: Input should be less than 1"),
    ("training.steps", -5, "training.steps: Input should be greater than 0"),
    ("training.steps", DELETE, "training: give exactly one of `steps` and `epochs`"),
    ("training.epochs", 3, "training: give exactly one of `steps` and `epochs`"),
    ("training.lr", "fast", "training.lr: Input should be a valid number"),
    ("training.lr_schedule", "cyclic", "training.lr_schedule: Input should be 'cosine'"),
    ("training.micro_batch_size", 0, "training.micro_batch_size: Input should be greater"),
    ("training.warmup_ratio", 1.0, "training.warmup_ratio: Input should be less than 1"),
    ("deepspeed.zero_stage", 4, "deepspeed.zero_stage: Input should be less than or equal to 3"),
    ("deepspeed.precision", "fp16", "deepspeed.precision: Input should be 'auto'"),
    ("resources.workers", 0, "resources.workers: Input should be greater than 0"),
    ("methods", ["lora_grid", "adalora"], "methods.1: Input should be 'lora_grid'"),
    ("methods", [], "methods: give each method once, at least one"),
    ("search.trials_per_arm", 0, "search.trials_per_arm: Input should be greater than 0"),
    (
        "search.space",
        {"training.lr": {"low": 1e-2, "high": 1e-3}},
        "search.space.training.lr: low (0.01) must be below high (0.001)",
    ),
    (
        "search.space",
        {"training.lrate": {"low": 1e-3, "high": 1e-2}},
        "search.space.training.lrate: training.lrate: Extra inputs are not permitted",
    ),
    (
        "search.space",
        {"training.lr": {"low": 0.0, "high": 1e-2, "log": True}},
        "search.space.training.lr: a log range needs low > 0, got 0.0",
    ),
    (
        "search.space",  # every choice is checked, not only the first
        {"adapters.scaling": {"choices": ["none", "rank", "log"]}},
        "search.space.adapters.scaling: adapters.scaling: Input should be 'none', 'rank' or",
    ),
    ("tracking.uri", "ftp://mlflow", "tracking.uri: 'ftp://mlflow' is not an MLflow"),
    ("seeds", [0, 0], "seeds: give each seed once"),
    ("price_per_device_hour", -1, "price_per_device_hour: Input should be greater than or equal"),
    ("sweep", {"task.shift": [0.1, 2.0]}, "sweep.task.shift: task.planted.shift: Input should"),
    ("bogus", 1, "bogus: Extra inputs are not permitted"),
    # what the model's attention needs, before transformers raises it mid-build
    ("model.tiny", {"hidden": 32, "heads": 3}, "model.tiny.heads: 3 heads do not divide hidden"),
    ("model.tiny", {"hidden": 40, "heads": 5}, "model.tiny.heads: 5 heads cannot share 2 key/"),
    ("model.tiny", {"hidden": 36, "heads": 4}, "model.tiny.heads: rotary positions need an even"),
    # never a setting: inf and nan
    ("training.lr", float("inf"), "training.lr: Input should be a finite number"),
    ("training.lr", float("nan"), "training.lr: Input should be a finite number"),
    ("adapters.alpha", float("inf"), "adapters.alpha: Input should be a finite number"),
    (
        "search.space",
        {"training.lr": {"low": 1e-3, "high": float("inf"), "log": True}},
        "search.space.training.lr.high: Input should be a finite number",
    ),
]


@pytest.mark.parametrize("path,value,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_gives_one_clear_error(path, value, message):
    """The one line starts with the field at fault, then says what is wrong with it."""
    with pytest.raises(SpecError) as e:
        parse_spec(mutate(path, value))
    assert str(e.value).startswith(message), str(e.value)
    assert len(str(e.value).splitlines()) == 1, str(e.value)


def test_the_scaling_can_be_searched_per_arm():
    spec = parse_spec(
        mutate("search.space", {"adapters.scaling": {"choices": ["none", "rank", "sqrt"]}})
    )
    assert spec.search.space["adapters.scaling"].choices == ["none", "rank", "sqrt"]


def test_text_task_on_tiny_model_needs_byte_vocab():
    data = mutate("task", {"kind": "gsm8k"})
    with pytest.raises(SpecError, match="model.tiny.vocab: a text task"):
        parse_spec(data)


def test_overrides_apply_before_validation_and_do_not_touch_the_input():
    spec = parse_spec(BASE, ["training.lr=0.01", "adapters.train_ranks=[1, 4]"])
    assert spec.training.lr == 0.01 and spec.adapters.train_ranks == [1, 4]
    assert BASE["training"]["lr"] == 3e-3
    with pytest.raises(SpecError, match="expected key=value"):
        parse_spec(BASE, ["training.lr"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "training.lr=-1"], "training.lr: Input should be greater than 0"),
        (["--set", "methods=[foo]"], "methods.0: Input should be"),
        (["--set", "tracking.uri=ftp://x"], "tracking.uri"),
    ],
)
def test_study_command_rejects_bad_spec_and_starts_nothing(tmp_path, args, message):
    out = tmp_path / "study"
    proc = study_job(out, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_relative_paths_in_a_spec_file_are_relative_to_that_file(tmp_path, monkeypatch):
    """A Ray job runs in a copy of the repo: a spec's data must not depend on the working
    directory. The shipped SmolLM2 spec finds ../shared from any directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "specs").mkdir()
    spec = {
        "name": "rel",
        "model": {"tiny": {"vocab": 258}},
        "task": {"kind": "jsonl", "train": "../data/train.jsonl"},
        "training": {"steps": 1},
    }
    (tmp_path / "specs" / "s.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(ROOT)
    assert load_spec(tmp_path / "specs" / "s.yaml").task.train == str(
        tmp_path / "data" / "train.jsonl"
    )
    monkeypatch.chdir(tmp_path)
    smol = load_spec(ROOT / "jobs" / "specs" / "smollm2-gsm8k-cpu.yaml")
    assert Path(smol.task.path) == (ROOT.parent / "shared" / "data" / "gsm8k").resolve()
