"""GSM8K against lm-evaluation-harness's own `gsm8k` task (lm-eval 0.4.13, a test dependency):
its prompts at 3 and 8 shots, its few-shot draws, its stop sequences, filters and exact_match,
all run offline on the real files in ../shared/data/gsm8k (lm-eval reads them as "json" data
in place of the hub's openai/gsm8k; no model, no network)."""

import json
import random
from pathlib import Path

import lm_eval
import pytest
import yaml
from lm_eval.api.samplers import ContextSampler
from lm_eval.api.task import ConfigurableTask
from lm_eval.models.utils import postprocess_generated_text

from rankstudy.core.spec import GSM8KTaskSpec
from rankstudy.model.tokenizer import byte_tokenizer
from rankstudy.tasks.gsm8k import (
    LM_EVAL_STOPS,
    GSM8KTask,
    few_shot_prompt,
    lm_eval_exemplars,
    score_answer,
)
from rankstudy.tasks.rows import gsm8k_splits
from studies import GSM8K_DATA

GSM8K_YAML = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (GSM8K_DATA / name).read_text("utf-8").splitlines()]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def lm_eval_task(tmp_path_factory):
    """lm-eval's gsm8k task as its yaml defines it, reading the local files."""
    cache = tmp_path_factory.mktemp("hf-datasets")

    def build(**overrides) -> ConfigurableTask:
        config = yaml.safe_load(GSM8K_YAML.read_text(encoding="utf-8"))
        files = {s: str(GSM8K_DATA / f"{s}.jsonl") for s in ("train", "test")}
        config |= {"dataset_path": "json", "dataset_name": None}
        config |= {"dataset_kwargs": {"data_files": files}, **overrides}
        return ConfigurableTask(config=config, cache_dir=str(cache))

    return build


def lm_eval_prompts(task: ConfigurableTask, shots: int, limit: int) -> list[str]:
    """The contexts lm-eval's evaluator builds for the first `limit` test problems (its
    --limit), few-shot seed 1234. (It compiles two jinja templates per exemplar: slow.)"""
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit)
    return [inst.arguments[0] for inst in task.instances]


@pytest.mark.parametrize("shots", [3, 8])
def test_random_sampler_prompts_equal_lm_evals(tok, lm_eval_task, shots):
    theirs = lm_eval_task()
    assert type(theirs.sampler) is ContextSampler  # gsm8k.yaml keeps the seeded random default
    expected = lm_eval_prompts(theirs, shots, limit=100)
    task = GSM8KTask(tok, path=str(GSM8K_DATA), shots=shots, fewshot_sampler="random", max_eval=100)
    assert [e.prompt for e in task.examples["test"]] == expected


@pytest.mark.parametrize("shots", [3, 8])
def test_first_n_prompts_equal_lm_evals_first_n_sampler(tok, lm_eval_task, shots):
    """Today's default format is lm-eval's plain-text context, exemplars and all."""
    first_n = lm_eval_task(fewshot_config={"sampler": "first_n"})
    expected = lm_eval_prompts(first_n, shots, limit=20)
    task = GSM8KTask(tok, path=str(GSM8K_DATA), shots=shots, max_eval=20)
    assert [e.prompt for e in task.examples["test"]] == expected


def test_random_exemplars_by_hand():
    """lm-eval's draw, worked out: Random(1234).sample over the 7,473 train problems, one call
    per test problem in order; sample() picks the same indices whatever the pool holds."""
    train, test = rows("train.jsonl"), rows("test.jsonl")
    rnd = random.Random(1234)
    first, second = rnd.sample(range(len(train)), 3), rnd.sample(range(len(train)), 3)
    got = lm_eval_exemplars(train, test[:2], 3, same_split=False)
    assert got == [[train[i] for i in first], [train[i] for i in second]]
    assert got[0][0]["question"].startswith("Jen and Tyler are gymnasts")
    prompt = few_shot_prompt(test[0]["question"], got[0])
    shot = got[0][0]
    assert prompt.startswith(f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\nQuestion:")
    assert prompt.endswith(f"\n\nQuestion: {test[0]['question']}\nAnswer:")
    assert lm_eval_exemplars(train, test[:2], 0, same_split=False) == [[], []]


def test_validation_exemplars_follow_lm_evals_same_split_rule(tok, tmp_path):
    """Validation problems are train problems: lm-eval then draws one more and drops the
    problem itself (ContextSampler.sample with eval_doc)."""
    _, split = gsm8k_splits(str(GSM8K_DATA), 3, validation_size=40)
    task = GSM8KTask(
        tok, path=str(GSM8K_DATA), shots=3, validation_size=40, fewshot_sampler="random"
    )
    sampler = ContextSampler(rows("train.jsonl"), rnd=1234)
    expected = [
        few_shot_prompt(doc["question"], sampler.sample(3, eval_doc=doc))
        for doc in split["validation"]
    ]
    assert [e.prompt for e in task.examples["validation"]] == expected
    # A test slice carved from a single jsonl file is a slice of its own pool too.
    lines = (GSM8K_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    file = tmp_path / "mine.jsonl"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    carved = GSM8KTask(
        tok, path=str(file), shots=3, validation_size=10, test_size=5, fewshot_sampler="random"
    )
    _, split = gsm8k_splits(str(file), 3, validation_size=10, test_size=5)
    sampler = ContextSampler([json.loads(line) for line in lines], rnd=1234)
    expected = [
        few_shot_prompt(doc["question"], sampler.sample(3, eval_doc=doc)) for doc in split["test"]
    ]
    assert [e.prompt for e in carved.examples["test"]] == expected
    # A pool holding copies of the problem: lm-eval 0.4.13 redraws when too few are left.
    pool = [{"question": str(i), "answer": "#### 1"} for i in range(5)]
    doc = pool[0]
    pool += [doc] * 6
    sampler = ContextSampler(pool, rnd=1234)
    expected = [sampler.sample(2, eval_doc=doc) for _ in range(30)]
    assert lm_eval_exemplars(pool, [doc] * 30, 2, same_split=True) == expected
    assert all(doc not in shots for shots in expected)


# Model outputs around a gold answer g (as the solution writes it) and n (g without commas):
# with and without "####", $, commas, trailing periods, decimals, signs, several "####", text
# after the number, stop sequences, and nothing to find ("[invalid]").
OUTPUTS = [
    " She sells {n} eggs.\n#### {g}",
    "#### {n}",
    "#### {g}",
    "The answer is {n}.",
    "The answer is {g}",
    "#### ${n}",
    "#### {n}.",
    "#### {n}.00",
    "#### {n},",
    "####{n}",
    "#### {n} dollars",
    "#### -{n}",
    "#### 0{n}",
    "#### 7\n#### {n}",
    "#### {n}\n#### 7",
    "#### {n}#### 7",
    "#### {n}\n\nQuestion: how many? Answer: #### 7",
    "{n}\n\nQuestion: 7",
    "It is {n}</s>#### 7",
    "#### {n}<|im_end|> 7",
    "Question: #### {n}",
    "Total: ${g}\nso 7 remain",
    "{n}\n\n7",
    "costs $7 and then {n}",
    "#### 1 2 {n}",
    "#### - {n}",
    "#### .",
    "#### ,",
    "#### $",
    "-.5 or 3..",
    "no number here",
    "",
]
GOLDS = [0, 146, 489, 611]  # test problems answering 18, 2,125, -10 and 1,450,000


def lm_eval_scores(task: ConfigurableTask, doc: dict, generation: str) -> dict[str, float]:
    """lm-eval's score of one generation under each filter: its model's cut at the stop
    sequences, then the task's filters and process_results (exact_match)."""
    inst = task.construct_requests(doc=doc, ctx="", metadata=("gsm8k", 0, 1))
    inst.resps = [postprocess_generated_text(generation, inst.arguments[1]["until"], None)]
    task._instances = [inst]
    task.apply_filters()
    return {
        name: task.process_results(doc, [resp])["exact_match"]
        for name, resp in inst.filtered_resps.items()
    }


def test_strict_and_flexible_agree_with_lm_evals_filters_and_metric(lm_eval_task):
    task = lm_eval_task()
    assert tuple(task.config.generation_kwargs["until"]) == LM_EVAL_STOPS
    test = rows("test.jsonl")
    docs = [test[i] for i in GOLDS] + [{"question": "?", "answer": "2.5 each\n#### 2.50"}]
    outcomes = {"strict": 0, "flexible": 0}
    for doc in docs:
        g = doc["answer"].rsplit("#### ", 1)[1]
        n = g.replace(",", "")
        for output in OUTPUTS:
            generation = output.format(g=g, n=n)
            theirs = lm_eval_scores(task, doc, generation)
            assert set(theirs) == {"strict-match", "flexible-extract"}
            for mode, name in (("strict", "strict-match"), ("flexible", "flexible-extract")):
                ours = score_answer(generation, " " + doc["answer"], mode)
                assert ours == theirs[name], (mode, doc["answer"][-12:], generation)
                outcomes[mode] += ours
    # Both outcomes occur often: the agreement is not all zeros or all ones.
    total = len(docs) * len(OUTPUTS)
    assert 0.2 * total < outcomes["strict"] < 0.6 * total
    assert 0.2 * total < outcomes["flexible"] < 0.6 * total


@pytest.mark.parametrize(
    ("generation", "strict", "flexible", "last_number"),
    [
        ("She made 9 * 2 = $18.\n#### 18", 1, 1, 1),
        ("The answer is 18.", 0, 1, 1),  # no "####": strict finds nothing, "[invalid]"
        ("#### $18", 0, 1, 1),  # strict's regex takes no "$"
        ("#### 1,8.", 1, 1, 1),  # "," and one final "." are ignored by exact_match
        ("#### 18.00", 0, 0, 1),  # compared as strings, not numbers
        ("#### 18 dollars, or 20", 1, 0, 1),  # flexible: the last number, "20"
        ("#### 17\n#### 18", 0, 1, 0),  # strict: the first "####"; last_number too
        ("#### 18\n\nQuestion: #### 5", 1, 1, 1),  # cut at "Question:"
        ("18\n\n5", 0, 0, 0),  # no cut at "\n\n" (lm-eval's nor last_number's): "5"
        ("#### -18", 0, 0, 0),
    ],
)
def test_answer_matches_by_hand(generation, strict, flexible, last_number):
    """Worked out from gsm8k.yaml: strict-match's regex "#### (\\-?[0-9\\.\\,]+)" takes the first
    match, flexible-extract's "(-?[$0-9.,]{2,})|(-?[0-9]+)" the last; exact_match removes ",",
    "$", everything up to the last "#### " and one final "." from both sides, then compares."""
    gold = " Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18"
    assert score_answer(generation, gold, "strict") == strict
    assert score_answer(generation, gold, "flexible") == flexible
    assert score_answer(generation, gold) == last_number


def test_task_scores_with_its_answer_match(tok):
    task = GSM8KTask(tok, path=str(GSM8K_DATA), max_eval=2, answer_match="strict")
    example = task.examples["test"][0]  # gold 18
    assert task.score_generation("The answer is 18.", example) == 0.0
    assert task.score_generation("So 18.\n#### 18", example) == 1.0
    golds = [" " + r["answer"] for r in rows("test.jsonl")]
    for mode in ("strict", "flexible"):  # every gold solution scores 1 against itself
        assert sum(score_answer(g, g, mode) for g in golds) == len(golds) == 1319
    spec = GSM8KTaskSpec(kind="gsm8k", path=str(GSM8K_DATA), max_eval=2, answer_match="strict")
    assert GSM8KTask.from_spec(spec, tok).answer_match == "strict"
    assert GSM8KTaskSpec(kind="gsm8k").answer_match == "last_number"  # studies unchanged
    assert GSM8KTaskSpec(kind="gsm8k").fewshot_sampler == "first_n"
    with pytest.raises(ValueError, match="answer_match"):
        GSM8KTask(tok, path=str(GSM8K_DATA), max_eval=2, answer_match="lenient")
    with pytest.raises(ValueError, match="fewshot_sampler"):
        GSM8KTask(tok, path=str(GSM8K_DATA), max_eval=2, fewshot_sampler="first")
