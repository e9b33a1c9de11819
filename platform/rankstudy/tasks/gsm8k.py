"""GSM8K: grade-school math word problems, scored by exact match of the final answer (the
paper's metric), or by teacher-forced accuracy of the solution's tokens and their NLL, which
move with rank and steps on models too small to get the final number right.

Format (the one lm-evaluation-harness uses, and the reference code trains on):

    Question: <question>
    Answer: <worked solution ending in "#### <number>">

Prompt = "Question: ...\\nAnswer:", response = " " + the worked solution, calculator
annotations like <<16-3-4=9>> kept unless `strip_annotations`. Training prompts are zero-shot;
validation and test prompts are preceded by `shots` solved exemplars, each followed by a blank
line (for plain text, the very string lm-eval's `gsm8k` task builds). `fewshot_sampler` picks
them: "first_n" (the default) takes the first `shots` train problems, in file order, never held
out for validation; "random" is lm-eval's default sampler, which the `gsm8k` task uses: one
Random(1234) per split, a fresh draw of train problems for each evaluated problem in order (a
train problem never serves as its own exemplar). With `chat_template` the question (and each
exemplar) is a user turn of the tokenizer's chat template and the solution the assistant's.

`answer_match` says when a generation's answer counts as right:
- "last_number" (the default): the number after "####", else the last number in the text,
  compared as numbers ("$1,000.00" equals "1000"); the generation is cut at "\\n\\nQuestion:".
- "strict" and "flexible": lm-eval's `gsm8k` task exactly (lm_eval/tasks/gsm8k/gsm8k.yaml,
  0.4.x), its "strict-match" and "flexible-extract" filters: the generation is cut at its stop
  sequences, the answer is taken by the filter's regex ("[invalid]" when it finds none), and
  filtered answer and gold solution are compared by its exact_match settings. Strict needs
  "#### N"; flexible takes the last number anywhere.

Which problems each split holds is decided in rankstudy.tasks.rows (torch-free: the plan
counts them there); this module turns them into prompts and scores the generations.
"""

from __future__ import annotations

import random
import re

from rankstudy.tasks.rows import Example, gsm8k_splits, load_gsm8k
from rankstudy.tasks.text import PromptResponseTask, chat_prompt, check_metrics

HUB_ID = "openai/gsm8k"
SEPARATOR = "\n\n"  # between exemplars (lm-eval's fewshot_delimiter)
_NUMBER = re.compile(r"(?:(?<![\d)])-)?\$?\d[\d,]*(?:\.\d+)?")
_ANNOTATION = re.compile(r"<<[^>]*>>")

# lm-eval's gsm8k task (gsm8k.yaml): generation_kwargs.until, its two filters (regex and
# group_select of each, then take_first), the RegexFilter fallback, exact_match's
# regexes_to_ignore (ignore_case true, ignore_punctuation false) and the few-shot seed
# (lm_eval.defaults.DEFAULT_OTHER_SEED, the evaluator's fewshot_random_seed).
LM_EVAL_STOPS = ("Question:", "</s>", "<|im_end|>")
LM_EVAL_FILTERS = {
    "strict": (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),
    "flexible": (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1),
}
LM_EVAL_FALLBACK = "[invalid]"
LM_EVAL_IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")
LM_EVAL_FEWSHOT_SEED = 1234
ANSWER_MATCHES = ("last_number", *LM_EVAL_FILTERS)
FEWSHOT_SAMPLERS = ("first_n", "random")


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


def cut_at_stops(text: str) -> str:
    """The generation as lm-eval hands it to the filters: cut at each stop sequence in turn
    (lm_eval.models.utils.postprocess_generated_text). No cut at "\\n\\n": gsm8k's `until`
    is explicit, so lm-eval does not add its few-shot delimiter to it."""
    for stop in LM_EVAL_STOPS:
        text = text.split(stop)[0]
    return text


def regex_filter(text: str, answer_match: str) -> str:
    """lm-eval's RegexFilter for one response: the `group_select`-th match (for a pattern
    with several groups, its first non-empty group), stripped, or "[invalid]"."""
    pattern, group_select = LM_EVAL_FILTERS[answer_match]
    matches = pattern.findall(text)
    if not matches:
        return LM_EVAL_FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), LM_EVAL_FALLBACK)
    return match.strip()


def lm_eval_normalize(s: str) -> str:
    """What lm-eval's exact_match (exact_match_hf_evaluate) compares, with gsm8k's settings:
    each ignored regex removed in turn, then lower case. A gold solution becomes its number."""
    for regex in LM_EVAL_IGNORED:
        s = re.sub(regex, "", s)
    return s.lower()


def lm_eval_match(generated: str, gold: str, answer_match: str) -> float:
    """lm-eval's gsm8k score of one generation under its "strict" or "flexible" filter."""
    predicted = regex_filter(cut_at_stops(generated), answer_match)
    return float(lm_eval_normalize(predicted) == lm_eval_normalize(gold))


def score_answer(generated: str, gold: str, answer_match: str = "last_number") -> float:
    """1.0 when the generation's answer matches the gold solution's, else 0.0. "last_number"
    compares final numbers, the generation cut where a new exemplar would start
    ("\\n\\nQuestion:"); "strict" and "flexible" are lm-eval's (`lm_eval_match`)."""
    if answer_match != "last_number":
        return lm_eval_match(generated, gold, answer_match)
    predicted = extract_answer(generated.split(SEPARATOR + "Question:")[0])
    return float(predicted is not None and predicted == extract_answer(gold))


def strip_calculator(answer: str) -> str:
    """Remove calculator annotations: "16 - 3 = <<16-3=13>>13" -> "16 - 3 = 13"."""
    return _ANNOTATION.sub("", answer)


def question_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def few_shot_prompt(question: str, exemplars: list[dict]) -> str:
    """Solved exemplars, each followed by a blank line, then the question to answer: lm-eval's
    plain-text context (doc_to_text, target_delimiter " ", fewshot_delimiter "\\n\\n")."""
    shots = "".join(
        question_prompt(e["question"]) + " " + e["answer"] + SEPARATOR for e in exemplars
    )
    return shots + question_prompt(question)


def sample_without(rnd: random.Random, pool: list[dict], doc: dict, shots: int) -> list[dict]:
    """lm-eval's draw for a doc of the pool's own split: one more than needed, the doc (every
    copy) dropped; should copies leave too few, a fresh draw from the pool without them."""
    drawn = [e for e in rnd.sample(pool, shots + 1) if e != doc][:shots]
    if len(drawn) < shots:
        drawn = rnd.sample([e for e in pool if e != doc], shots)
    return drawn


def lm_eval_exemplars(
    pool: list[dict], docs: list[dict], shots: int, same_split: bool
) -> list[list[dict]]:
    """Each doc's exemplars as lm-eval's default ContextSampler (lm_eval.api.samplers)
    draws them: one Random(1234) for the split, `shots` problems of the pool sampled per doc,
    in order, so a doc's exemplars depend on its place in the split."""
    if shots == 0:  # lm-eval draws nothing then
        return [[] for _ in docs]
    rnd = random.Random(LM_EVAL_FEWSHOT_SEED)
    if not same_split:
        return [rnd.sample(pool, shots) for _ in docs]
    return [sample_without(rnd, pool, doc, shots) for doc in docs]


def exemplars_per_row(
    rows: dict[str, list[dict]], first: list[dict], path: str, shots: int, sampler: str
) -> dict[str, list[list[dict]]]:
    """Split -> each row's exemplars. Training rows get none. "first_n": the same `first`
    exemplars for every row; "random": lm-eval's draw from the whole train file, validation
    (and a test slice carved from a single jsonl) counting as its own split."""
    out = {"train": [[] for _ in rows["train"]]}
    if sampler == "first_n":
        return out | {s: [first for _ in rows[s]] for s in ("validation", "test")}
    pool, test_file = load_gsm8k(path)
    same = {"validation": True, "test": test_file is None}
    return out | {s: lm_eval_exemplars(pool, rows[s], shots, same[s]) for s in same}


def stripped(rows: list[dict]) -> list[dict]:
    """The rows with their calculator annotations removed."""
    return [row | {"answer": strip_calculator(row["answer"])} for row in rows]


def gsm8k_examples(
    rows: dict[str, list[dict]],
    exemplars: dict[str, list[list[dict]]],
    tokenizer,
    chat_template: bool,
) -> dict[str, list[Example]]:
    """Each split's prompts and responses, each row's prompt carrying its exemplars, as chat
    turns of the tokenizer's template or as plain "Question: ... Answer:" text."""

    def example(row: dict, shots: list[dict]) -> Example:
        if chat_template:
            turns = [(e["question"], e["answer"]) for e in shots]
            return Example(chat_prompt(tokenizer, turns, row["question"]), row["answer"])
        return Example(few_shot_prompt(row["question"], shots), " " + row["answer"])

    return {
        split: [example(r, e) for r, e in zip(split_rows, exemplars[split], strict=True)]
        for split, split_rows in rows.items()
    }


class GSM8KTask(PromptResponseTask):
    """GSM8K scored by `metric` (exact match of the final answer, as `answer_match` says, by
    default) and any `extra_metrics` beside it.

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
        answer_match: str = "last_number",
        fewshot_sampler: str = "first_n",
        seed: int = 0,
    ) -> None:
        check_metrics(metric, extra_metrics)  # before any data is read
        if answer_match not in ANSWER_MATCHES:
            raise ValueError(f"answer_match: {answer_match!r} is not one of {ANSWER_MATCHES}")
        if fewshot_sampler not in FEWSHOT_SAMPLERS:
            raise ValueError(
                f"fewshot_sampler: {fewshot_sampler!r} is not one of {FEWSHOT_SAMPLERS}"
            )
        self.answer_match = answer_match
        exemplars, rows = gsm8k_splits(
            path, shots, validation_size, test_size, max_train, max_eval, seed
        )
        per_row = exemplars_per_row(rows, exemplars, path, shots, fewshot_sampler)
        if strip_annotations:  # the rows' text, not which split holds them or its exemplars
            exemplars, rows = stripped(exemplars), {s: stripped(r) for s, r in rows.items()}
            per_row = {s: [stripped(e) for e in each] for s, each in per_row.items()}
        self.exemplars = exemplars  # first_n's; with "random" each prompt draws its own
        examples = gsm8k_examples(rows, per_row, tokenizer, chat_template)
        super().__init__(
            examples, tokenizer, max_length, metric, max_new_tokens, extra_metrics, chat_template
        )

    def score_generation(self, text: str, example: Example) -> float:
        return score_answer(text, example.response, self.answer_match)
