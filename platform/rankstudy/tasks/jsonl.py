"""The user's own prompt/response pairs from jsonl files, scored by a named metric.

Metrics: "exact_match" (greedy generation equals the response, surrounding whitespace
ignored) and "token_accuracy" (teacher-forced next-token accuracy on the response). Missing
validation or test files are replaced by seeded slices held out of the train file.
"""

from __future__ import annotations

import json
from pathlib import Path

from rankstudy.tasks.text import (
    Example,
    PromptResponseTask,
    chat_prompt,
    check_metrics,
    holdout,
)


def read_pairs(path: str, field: str, prompt_field: str, response_field: str) -> list[Example]:
    """Examples from one jsonl file; `field` names the spec field the path came from."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{field}: no such file {path}")
    examples = []
    with file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{field}: {path} line {n} is not valid JSON: {e}") from None
            for key in (prompt_field, response_field):
                if not isinstance(row, dict) or not isinstance(row.get(key), str):
                    raise ValueError(f"{field}: {path} line {n} has no string field {key!r}")
            examples.append(Example(row[prompt_field], row[response_field]))
    if not examples:
        raise ValueError(f"{field}: {path} holds no examples")
    return examples


class JsonlTask(PromptResponseTask):
    """Prompt/response pairs from `train` (and optional `validation` / `test`) jsonl files.

    A missing validation or test file becomes a seeded slice of `validation_size` (test:
    `test_size`, default `validation_size`) train examples. `max_train` / `max_eval` keep
    the first examples of train / validation and test.
    """

    def __init__(
        self,
        tokenizer,
        train: str,
        validation: str | None = None,
        test: str | None = None,
        prompt_field: str = "prompt",
        response_field: str = "response",
        metric: str = "exact_match",
        extra_metrics: tuple[str, ...] = (),
        chat_template: bool = False,
        max_new_tokens: int = 128,
        max_length: int = 1024,
        validation_size: int = 200,
        test_size: int | None = None,
        max_train: int | None = None,
        max_eval: int | None = None,
        seed: int = 0,
    ) -> None:
        check_metrics(metric, extra_metrics)  # before any data is read
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
        except ValueError as e:
            raise ValueError(f"validation_size: train file {train}: {e}") from None
        pool = loaded["train"]
        loaded["train"] = [pool[i] for i in rest]
        for split, idx in zip(carve, held, strict=True):
            loaded[split] = [pool[i] for i in idx]
        examples = {
            split: rows[:max_train] if split == "train" else rows[:max_eval]
            for split, rows in loaded.items()
        }
        if chat_template:
            examples = {
                split: [Example(chat_prompt(tokenizer, [], e.prompt), e.response) for e in rows]
                for split, rows in examples.items()
            }
        super().__init__(
            examples, tokenizer, max_length, metric, max_new_tokens, extra_metrics, chat_template
        )

    def score_generation(self, text: str, example: Example) -> float:
        """Exact match: the generation equals the response, surrounding whitespace ignored."""
        return float(text.strip() == example.response.strip())
