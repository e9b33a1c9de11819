"""Which rows each split of a text task holds, decided without torch or a tokenizer.

The GSM8K and jsonl readers, the seeded validation (and test) slices carved out of train and
the max_train / max_eval caps live here, apart from the tasks' batching and scoring (which
need torch), so that `rankstudy plan` counts a text task's examples per split with the very
code the tasks build their splits from, and imports no torch to do it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from rankstudy.core.errors import InputError


class Example(NamedTuple):
    prompt: str
    response: str


def holdout(
    n: int, sizes: Sequence[int], seed: int, exclude: int = 0
) -> tuple[list[int], list[list[int]]]:
    """Carve disjoint seeded slices of the given sizes out of range(n), never taking the first
    `exclude` indices (few-shot exemplars). Returns (the rest, [slice, ...]), all in order."""
    pool = list(range(exclude, n))
    if sum(sizes) >= len(pool):
        raise InputError(f"cannot hold out {sum(sizes)} of {len(pool)} examples")
    random.Random(seed).shuffle(pool)
    slices, start = [], 0
    for size in sizes:
        slices.append(sorted(pool[start : start + size]))
        start += size
    taken = {i for s in slices for i in s}
    return [i for i in range(n) if i not in taken], slices


def _json_lines(path: Path, field: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of each line of a jsonl file, blank lines skipped; a line that is
    not JSON, or a file that is not UTF-8 text, is an InputError naming `field`."""
    with path.open(encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{field}: {path} line {n} is not valid JSON: {e}") from None
                yield n, row
        except UnicodeDecodeError as e:
            raise InputError(f"{field}: {path} is not UTF-8 text ({e})") from None


def read_gsm8k_jsonl(path: Path) -> list[dict]:
    """GSM8K problems ({"question", "answer"}) of one jsonl file, blank lines skipped."""
    rows = []
    for n, row in _json_lines(path, "path"):
        for key in ("question", "answer"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise InputError(f"path: {path} line {n} has no string {key!r}")
        rows.append({"question": row["question"], "answer": row["answer"]})
    if not rows:
        raise InputError(f"path: {path} holds no problems")
    return rows


def load_gsm8k(path: str) -> tuple[list[dict], list[dict] | None]:
    """(train rows, test rows) from a directory with train.jsonl and test.jsonl, from the hub
    (an "owner/name" id such as "openai/gsm8k", config "main"), or (rows, None) from one
    jsonl file."""
    local = Path(path)
    if local.is_dir():
        missing = [n for n in ("train.jsonl", "test.jsonl") if not (local / n).is_file()]
        if missing:
            raise InputError(f"path: {local} lacks {', '.join(missing)}")
        return read_gsm8k_jsonl(local / "train.jsonl"), read_gsm8k_jsonl(local / "test.jsonl")
    if local.is_file():
        return read_gsm8k_jsonl(local), None
    if path.endswith(".jsonl") or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise InputError(f"path: {path} is neither a local file or directory nor a hub id")
    from datasets import load_dataset

    data = load_dataset(path, "main")
    rows = {
        s: [{"question": r["question"], "answer": r["answer"]} for r in data[s]]
        for s in ("train", "test")
    }
    return rows["train"], rows["test"]


def gsm8k_splits(
    path: str,
    shots: int = 0,
    validation_size: int = 200,
    test_size: int | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """(the few-shot exemplars, split -> rows): the exemplars are the first `shots` train
    problems, kept in train but never held out; validation is a seeded slice of the train
    problems, test the test file or, with one jsonl `path`, a second slice (`test_size`,
    default `validation_size`); max_train / max_eval keep the first rows of train / the others."""
    if shots < 0:
        raise ValueError(f"shots: must be >= 0, got {shots}")
    train_rows, test_rows = load_gsm8k(path)
    if shots > len(train_rows):
        raise InputError(f"shots: {shots} exceeds the {len(train_rows)} train problems")
    sizes = (
        [validation_size]
        if test_rows is not None
        else [validation_size, validation_size if test_size is None else test_size]
    )
    try:
        rest, held = holdout(len(train_rows), sizes, seed, exclude=shots)
    except InputError as e:
        raise InputError(f"validation_size: {e}") from None
    if test_rows is None:
        test_rows = [train_rows[i] for i in held[1]]
    rows = {
        "train": [train_rows[i] for i in rest][:max_train],
        "validation": [train_rows[i] for i in held[0]][:max_eval],
        "test": test_rows[:max_eval],
    }
    return train_rows[:shots], rows


def read_pairs(path: str, field: str, prompt_field: str, response_field: str) -> list[Example]:
    """Examples from one jsonl file; `field` names the spec field the path came from."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{field}: no such file {path}")
    examples = []
    for n, row in _json_lines(file, field):
        for key in (prompt_field, response_field):
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise InputError(f"{field}: {path} line {n} has no string field {key!r}")
        examples.append(Example(row[prompt_field], row[response_field]))
    if not examples:
        raise InputError(f"{field}: {path} holds no examples")
    return examples


def jsonl_splits(
    train: str,
    validation: str | None = None,
    test: str | None = None,
    prompt_field: str = "prompt",
    response_field: str = "response",
    validation_size: int = 200,
    test_size: int | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
) -> dict[str, list[Example]]:
    """Split -> examples: a missing validation or test file becomes a seeded slice of
    `validation_size` (test: `test_size`, default `validation_size`) train examples;
    max_train / max_eval keep the first examples of train / the others."""
    paths = {"train": train, "validation": validation, "test": test}
    loaded = {
        split: read_pairs(p, split, prompt_field, response_field)
        for split, p in paths.items()
        if p is not None
    }
    sizes = {
        "validation": validation_size,
        "test": validation_size if test_size is None else test_size,
    }
    carve = [s for s in ("validation", "test") if s not in loaded]
    try:
        rest, held = holdout(len(loaded["train"]), [sizes[s] for s in carve], seed)
    except InputError as e:
        raise InputError(f"validation_size: train file {train}: {e}") from None
    pool = loaded["train"]
    loaded["train"] = [pool[i] for i in rest]
    for split, idx in zip(carve, held, strict=True):
        loaded[split] = [pool[i] for i in idx]
    return {
        split: rows[:max_train] if split == "train" else rows[:max_eval]
        for split, rows in loaded.items()
    }
