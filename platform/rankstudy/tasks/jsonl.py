"""The user's own prompt/response pairs from jsonl files, scored by a named metric.

Metrics: "exact_match" (greedy generation equals the response, surrounding whitespace
ignored) and "token_accuracy" (teacher-forced next-token accuracy on the response). Missing
validation or test files are replaced by seeded slices held out of the train file
(rankstudy.tasks.rows reads the files and decides the splits, torch-free, for the plan too).
"""

from __future__ import annotations

from rankstudy.tasks.rows import Example, jsonl_splits
from rankstudy.tasks.text import PromptResponseTask, chat_prompt, check_metrics


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
        examples = jsonl_splits(
            train,
            validation,
            test,
            prompt_field,
            response_field,
            validation_size,
            test_size,
            max_train,
            max_eval,
            seed,
        )
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
