"""GSM8K: grade-school math word problems, scored by exact match of the final number (the
paper's metric), or by teacher-forced accuracy of the solution's tokens and their NLL, which
move with rank and steps on models too small to get the final number right.

Format (the one lm-evaluation-harness uses, and the reference code trains on):

    Question: <question>
    Answer: <worked solution ending in "#### <number>">

Prompt = "Question: ...\\nAnswer:", response = " " + the worked solution, calculator
annotations like <<16-3-4=9>> kept unless `strip_annotations`. Training prompts are zero-shot;
validation and test prompts are preceded by `shots` solved exemplars, each followed by a blank
line: the first `shots` problems of the train file, in file order (lm-eval's "first_n"), never
held out for validation and never from test. With `chat_template` the question (and each
exemplar) is a user turn of the tokenizer's chat template and the solution the assistant's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rankstudy.tasks.text import (
    Example,
    PromptResponseTask,
    chat_prompt,
    check_metrics,
    holdout,
)

HUB_ID = "openai/gsm8k"
SEPARATOR = "\n\n"  # between exemplars, and where a generation that runs on is cut
_NUMBER = re.compile(r"(?:(?<![\d)])-)?\$?\d[\d,]*(?:\.\d+)?")
_ANNOTATION = re.compile(r"<<[^>]*>>")


def normalize_number(s: str) -> str:
    """A comparable form: "$1,000.00", "1000." and " 1000 " all become "1000", "2.50" "2.5"."""
    s = s.strip().strip(".").replace(",", "").replace("$", "").strip()
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def extract_answer(text: str) -> str | None:
    """The normalized number after the first "####", else the last number in the text."""
    head, sep, tail = text.partition("####")
    if sep:
        found = _NUMBER.search(tail)
        return normalize_number(found.group()) if found else None
    found = _NUMBER.findall(head)
    return normalize_number(found[-1]) if found else None


def score_answer(generated: str, gold: str) -> float:
    """1.0 when the generation's final number equals the gold solution's, else 0.0. The
    generation is cut where a new exemplar would start ("\\n\\nQuestion:")."""
    predicted = extract_answer(generated.split(SEPARATOR + "Question:")[0])
    return float(predicted is not None and predicted == extract_answer(gold))


def strip_calculator(answer: str) -> str:
    """Remove calculator annotations: "16 - 3 = <<16-3=13>>13" -> "16 - 3 = 13"."""
    return _ANNOTATION.sub("", answer)


def question_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def few_shot_prompt(question: str, exemplars: list[dict]) -> str:
    """Solved exemplars, each followed by a blank line, then the question to answer."""
    shots = "".join(
        question_prompt(e["question"]) + " " + e["answer"] + SEPARATOR for e in exemplars
    )
    return shots + question_prompt(question)


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("question", "answer"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"path: {path} line {n} has no string {key!r}")
            rows.append({"question": row["question"], "answer": row["answer"]})
    return rows


def load_gsm8k(path: str) -> tuple[list[dict], list[dict] | None]:
    """(train rows, test rows) from a directory with train.jsonl and test.jsonl, from the hub
    (an "owner/name" id such as HUB_ID, config "main"), or (rows, None) from one jsonl file."""
    local = Path(path)
    if local.is_dir():
        missing = [n for n in ("train.jsonl", "test.jsonl") if not (local / n).is_file()]
        if missing:
            raise ValueError(f"path: {local} lacks {', '.join(missing)}")
        return read_jsonl(local / "train.jsonl"), read_jsonl(local / "test.jsonl")
    if local.is_file():
        return read_jsonl(local), None
    if path.endswith(".jsonl") or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ValueError(f"path: {path} is neither a local file or directory nor a hub id")
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
    strip_annotations: bool = False,
    seed: int = 0,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """(the few-shot exemplars, split -> rows): validation a seeded slice of the train
    problems (never an exemplar), test the test file or, with one jsonl `path`, a second slice."""
    if shots < 0:
        raise ValueError(f"shots: must be >= 0, got {shots}")
    train_rows, test_rows = load_gsm8k(path)
    if strip_annotations:
        for row in (*train_rows, *(test_rows or ())):
            row["answer"] = strip_calculator(row["answer"])
    if shots > len(train_rows):
        raise ValueError(f"shots: {shots} exceeds the {len(train_rows)} train problems")
    sizes = (
        [validation_size]
        if test_rows is not None
        else [validation_size, validation_size if test_size is None else test_size]
    )
    try:
        rest, held = holdout(len(train_rows), sizes, seed, exclude=shots)
    except ValueError as e:
        raise ValueError(f"validation_size: {e}") from None
    if test_rows is None:
        test_rows = [train_rows[i] for i in held[1]]
    rows = {
        "train": [train_rows[i] for i in rest][:max_train],
        "validation": [train_rows[i] for i in held[0]][:max_eval],
        "test": test_rows[:max_eval],
    }
    return train_rows[:shots], rows


def gsm8k_examples(
    rows: dict[str, list[dict]], exemplars: list[dict], tokenizer, chat_template: bool
) -> dict[str, list[Example]]:
    """Each split's prompts and responses; validation and test prompts carry the exemplars,
    as chat turns of the tokenizer's template or as plain "Question: ... Answer:" text."""
    shots_for = {"train": [], "validation": exemplars, "test": exemplars}

    def example(split: str, row: dict) -> Example:
        if chat_template:
            turns = [(e["question"], e["answer"]) for e in shots_for[split]]
            return Example(chat_prompt(tokenizer, turns, row["question"]), row["answer"])
        return Example(few_shot_prompt(row["question"], shots_for[split]), " " + row["answer"])

    return {split: [example(split, r) for r in split_rows] for split, split_rows in rows.items()}


class GSM8KTask(PromptResponseTask):
    """GSM8K scored by `metric` (exact match of the final number by default) and any
    `extra_metrics` beside it.

    Validation is a seeded slice of `validation_size` train problems. With a single jsonl file
    as `path`, a test slice of `test_size` (default `validation_size`) is carved out as well.
    `max_train` / `max_eval` keep the first examples of train / validation and test.
    """

    def __init__(
        self,
        tokenizer,
        path: str = HUB_ID,
        shots: int = 0,
        max_new_tokens: int = 256,
        max_length: int = 1024,
        validation_size: int = 200,
        test_size: int | None = None,
        max_train: int | None = None,
        max_eval: int | None = None,
        strip_annotations: bool = False,
        metric: str = "exact_match",
        extra_metrics: tuple[str, ...] = (),
        chat_template: bool = False,
        seed: int = 0,
    ) -> None:
        check_metrics(metric, extra_metrics)  # before any data is read
        self.exemplars, rows = gsm8k_splits(
            path, shots, validation_size, test_size, max_train, max_eval, strip_annotations, seed
        )
        examples = gsm8k_examples(rows, self.exemplars, tokenizer, chat_template)
        super().__init__(
            examples, tokenizer, max_length, metric, max_new_tokens, extra_metrics, chat_template
        )

    def score_generation(self, text: str, example: Example) -> float:
        return score_answer(text, example.response)
