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
Which problems each split holds is decided in rankstudy.tasks.rows (torch-free: the plan
counts them there); this module turns them into prompts and scores the generations.
"""

from __future__ import annotations

import re

from rankstudy.tasks.rows import Example, gsm8k_splits
from rankstudy.tasks.text import PromptResponseTask, chat_prompt, check_metrics

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


def stripped(rows: list[dict]) -> list[dict]:
    """The rows with their calculator annotations removed."""
    return [row | {"answer": strip_calculator(row["answer"])} for row in rows]


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
        exemplars, rows = gsm8k_splits(
            path, shots, validation_size, test_size, max_train, max_eval, seed
        )
        if strip_annotations:  # the rows' text, not which split holds them
            exemplars, rows = stripped(exemplars), {s: stripped(r) for s, r in rows.items()}
        self.exemplars = exemplars
        examples = gsm8k_examples(rows, self.exemplars, tokenizer, chat_template)
        super().__init__(
            examples, tokenizer, max_length, metric, max_new_tokens, extra_metrics, chat_template
        )

    def score_generation(self, text: str, example: Example) -> float:
        return score_answer(text, example.response)
