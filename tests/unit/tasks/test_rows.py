"""The plan's split sizes of a text task are those of the task a trial builds, for every cap,
shot count, holdout and test slice: `split_sizes` counts rankstudy.tasks.rows without torch,
here compared with the task built from the same spec with the byte tokenizer."""

import json

import pytest

from rankstudy.core.arms import parse_arm
from rankstudy.core.spec import parse_spec
from rankstudy.model.build import build_task
from rankstudy.model.tokenizer import byte_tokenizer
from rankstudy.study.plan import split_sizes
from rankstudy.tasks.base import SPLITS
from studies import GSM8K_DATA, SMALL

TRAIN_FILE = GSM8K_DATA / "train.jsonl"  # one jsonl file: validation and test are carved


def text_spec(task: dict, seed: int = 0):
    return parse_spec(
        SMALL
        | {"model": {"tiny": {"hidden": 32, "layers": 1, "vocab": 512}}, "task": task, "seed": seed}
    )


def built_sizes(spec) -> dict[str, int]:
    task = build_task(spec, None, byte_tokenizer(), parse_arm("lora_r1", spec), spec.seed)
    return {s: task.size(s) for s in SPLITS}


@pytest.mark.parametrize(
    "task",
    [
        {"path": GSM8K_DATA},
        {"path": GSM8K_DATA, "shots": 5, "validation_size": 50, "max_train": 100, "max_eval": 30},
        {"path": GSM8K_DATA, "shots": 8, "max_train": 7300, "max_eval": 2000, "test_size": 30},
        {"path": GSM8K_DATA, "shots": 3, "validation_size": 7000, "strip_annotations": True},
        {"path": TRAIN_FILE, "validation_size": 40},
        {"path": TRAIN_FILE, "shots": 4, "validation_size": 25, "test_size": 300, "max_eval": 100},
        {"path": TRAIN_FILE, "shots": 2, "validation_size": 3000, "test_size": 4000},
        {"path": TRAIN_FILE, "test_size": 7, "max_train": 9},
    ],
)
def test_gsm8k_sizes_are_the_built_tasks(task):
    spec = text_spec({"kind": "gsm8k", **task} | {"path": str(task["path"])}, seed=3)
    assert split_sizes(spec) == built_sizes(spec)


def test_gsm8k_sizes_by_hand():
    """Exemplars stay in train but are never held out; a test_size beside a test file changes
    nothing."""
    sizes = split_sizes(text_spec({"kind": "gsm8k", "path": str(GSM8K_DATA), "test_size": 9}))
    assert sizes == {"train": 7473 - 200, "validation": 200, "test": 1319}
    task = {"kind": "gsm8k", "path": str(TRAIN_FILE), "shots": 4, "validation_size": 25}
    assert split_sizes(text_spec(task | {"test_size": 300, "max_eval": 100})) == {
        "train": 7473 - 325,
        "validation": 25,
        "test": 100,
    }
    too_many = text_spec(task | {"validation_size": 7468, "test_size": 1})
    for count in (split_sizes, built_sizes):  # the plan fails as the trial would
        with pytest.raises(ValueError, match="validation_size: cannot hold out 7469 of 7469"):
            count(too_many)


def write(path, n, blank_lines=False):
    rows = [json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(n)]
    path.write_text(("\n" if blank_lines else "").join(rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "files, fields",
    [
        (["train"], {"validation_size": 5}),
        (["train"], {"validation_size": 6, "max_train": 12, "max_eval": 4}),
        (["train", "validation"], {"validation_size": 11, "max_eval": 30}),
        (["train", "test"], {"validation_size": 6, "max_eval": 3, "max_train": 100}),
        (["train", "validation", "test"], {"max_train": 17}),
    ],
)
def test_jsonl_sizes_are_the_built_tasks(tmp_path, files, fields):
    counts = {"train": 40, "validation": 7, "test": 9}
    paths = {s: write(tmp_path / f"{s}.jsonl", counts[s], s == "train") for s in files}
    spec = text_spec({"kind": "jsonl", **paths, **fields})
    sizes = split_sizes(spec)
    assert sizes == built_sizes(spec)
    assert sum(sizes.values()) <= sum(counts[s] for s in files)


def test_jsonl_sizes_by_hand(tmp_path):
    """No test file: a test slice as long as validation is carved out of train as well."""
    train = write(tmp_path / "train.jsonl", 40, blank_lines=True)
    spec = text_spec({"kind": "jsonl", "train": train, "validation_size": 6, "max_eval": 4})
    assert split_sizes(spec) == {"train": 28, "validation": 4, "test": 4}
