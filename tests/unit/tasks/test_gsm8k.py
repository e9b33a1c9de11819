"""GSM8K on the real data: answer extraction, prompt format, splits, batching and scoring."""

import json
import random

import pytest
import torch
from torch import nn

from rankstudy.core.spec import BYTE_VOCAB_SIZE
from rankstudy.model.tiny import tiny_model
from rankstudy.model.tokenizer import byte_tokenizer
from rankstudy.tasks.gsm8k import (
    GSM8KTask,
    extract_answer,
    normalize_number,
    score_answer,
    strip_calculator,
)
from studies import GSM8K_DATA


def rows(name: str) -> list[dict]:
    assert (GSM8K_DATA / name).is_file(), f"the real GSM8K data is expected at {GSM8K_DATA}"
    return [
        json.loads(line) for line in (GSM8K_DATA / name).read_text(encoding="utf-8").splitlines()
    ]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def task(tok):
    return GSM8KTask(tok, path=str(GSM8K_DATA), shots=2, max_new_tokens=16, max_length=2048)


def test_gold_answers_of_the_whole_test_file_score_one(task):
    test = rows("test.jsonl")
    assert len(test) == task.size("test") == 1319
    assert sum(score_answer(r["answer"], r["answer"]) for r in test) == len(test)
    # Through the task: its response (" " + solution) judged against itself.
    assert sum(task.score_generation(e.response, e) for e in task.examples["test"]) == len(test)


def test_gold_answers_paired_with_wrong_problems_score_near_zero(task):
    examples = task.examples["test"]
    perm = list(range(len(examples)))
    random.Random(0).shuffle(perm)
    wrong = sum(
        task.score_generation(examples[j].response, examples[i]) for i, j in enumerate(perm)
    )
    assert wrong / len(examples) < 0.05


def test_normalize_number():
    assert normalize_number("1,000") == normalize_number("1000") == "1000"
    assert normalize_number("1000.0") == normalize_number("1000.00") == "1000"
    assert normalize_number("$1,000.00") == normalize_number(" 1000. ") == "1000"
    assert normalize_number("2.50") == "2.5"
    assert normalize_number("100") == "100"  # trailing zeros of integers stay
    assert normalize_number("-3") == "-3"


def test_extract_answer():
    assert extract_answer("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert extract_answer("#### $1,200.00") == "1200"
    assert extract_answer("first #### 7 then #### 8") == "7"  # the first marker counts
    assert extract_answer("2 + 3 = 5, so the answer is 1,000.") == "1000"  # last number
    assert extract_answer("10-5 = 5 and then 5-10") == "10"
    assert extract_answer("she owes -3 dollars") == "-3"
    assert extract_answer("no numbers here") is None
    assert extract_answer("#### none") is None


def test_score_answer():
    gold = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 1,000"
    assert score_answer(" so 1000.0 in total\n#### 1000", gold) == 1.0
    assert score_answer("The answer is $1,000.", gold) == 1.0
    assert score_answer("#### 999", gold) == 0.0
    assert score_answer("", gold) == 0.0
    # A generation that runs on into a new exemplar is cut there.
    assert score_answer("It is 1000\n\nQuestion: Tom has 5 apples", gold) == 1.0


def test_few_shot_prompt_verbatim(task):
    example = task.examples["test"][0]
    assert example.prompt == (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?\n"
        "Answer: Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
        "#### 72\n"
        "\n"
        "Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes "
        "of babysitting. How much did she earn?\n"
        "Answer: Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n"
        "#### 10\n"
        "\n"
        "Question: Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning "
        "and bakes muffins for her friends every day with four. She sells the remainder at the "
        "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make "
        "every day at the farmers' market?\n"
        "Answer:"
    )
    assert example.response == (
        " Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n"
        "#### 18"
    )
    # Training prompts are zero-shot; the exemplars are the first train problems.
    train = task.examples["train"][0]
    assert train.prompt.startswith("Question: Natalia sold clips") and "####" not in train.prompt
    assert train.prompt.endswith("April and May?\nAnswer:")
    assert [e["question"][:12] for e in task.exemplars] == ["Natalia sold", "Weng earns $"]


def test_validation_is_held_out_of_train_and_seeded(tok, task):
    train_q = {e.prompt for e in task.examples["train"]}
    val_q = {e.prompt.rsplit("Question: ", 1)[1] for e in task.examples["validation"]}
    assert len(val_q) == task.size("validation") == 200
    assert task.size("train") + task.size("validation") == len(rows("train.jsonl"))
    assert not {"Question: " + q for q in val_q} & train_q
    assert not val_q & {e["question"] + "\nAnswer:" for e in task.exemplars}
    again = GSM8KTask(tok, path=str(GSM8K_DATA), shots=2)
    assert again.examples["validation"] == task.examples["validation"]
    other = GSM8KTask(tok, path=str(GSM8K_DATA), shots=2, seed=1)
    assert other.examples["validation"] != task.examples["validation"]
    small = GSM8KTask(tok, path=str(GSM8K_DATA), validation_size=50, max_train=10, max_eval=7)
    assert (small.size("train"), small.size("validation"), small.size("test")) == (10, 7, 7)


def test_single_jsonl_file_and_stripped_annotations(tok, tmp_path):
    lines = (GSM8K_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    file = tmp_path / "mine.jsonl"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    t = GSM8KTask(tok, path=str(file), validation_size=10, test_size=5, strip_annotations=True)
    assert (t.size("train"), t.size("validation"), t.size("test")) == (45, 10, 5)
    prompts = [{e.prompt for e in t.examples[s]} for s in ("train", "validation", "test")]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert not any("<<" in e.response for s in t.examples.values() for e in s)
    assert strip_calculator("16 - 3 = <<16-3=13>>13 eggs") == "16 - 3 = 13 eggs"
    with pytest.raises(ValueError, match="path: .*missing.jsonl"):
        GSM8KTask(tok, path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="path: .* lacks train.jsonl"):
        GSM8KTask(tok, path=str(tmp_path))


def test_collate_masks_the_prompt(tok):
    t = GSM8KTask(tok, path=str(GSM8K_DATA), max_train=3, max_length=2048)
    batch = t.collate("train", [0, 1])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for row, e in enumerate(t.examples["train"][:2]):
        p, r = len(e.prompt.encode()), len(e.response.encode())
        assert labels[row, :p].eq(-100).all()
        assert labels[row, p : p + r + 1].tolist() == ids[row, p : p + r + 1].tolist()
        assert tok.decode(ids[row, p : p + r + 1]) == e.response + "<eos>"
        assert mask[row].sum() == p + r + 1
        assert labels[row, p + r + 1 :].eq(-100).all() and ids[row, p + r + 1 :].eq(256).all()
    # Too long: the prompt loses its start, the response stays whole.
    cut = GSM8KTask(tok, path=str(GSM8K_DATA), max_train=3, max_length=300)
    row = cut.collate("train", [0])
    e = cut.examples["train"][0]
    assert row["input_ids"].shape[1] == 300
    assert tok.decode(row["labels"][0][row["labels"][0] >= 0]) == e.response + "<eos>"
    assert e.prompt.endswith(tok.decode(row["input_ids"][0][row["labels"][0] < 0]))


class Oracle(nn.Module):
    """A stand-in LM whose greedy generation is `answer(prompt)`, then eos, then junk."""

    def __init__(self, tok, answer):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.tok, self.answer = tok, answer

    def generate(self, input_ids, attention_mask, **kw):
        assert kw["do_sample"] is False and kw["synced_gpus"] is False and not self.training
        assert (kw["pad_token_id"], kw["eos_token_id"]) == (256, 257)
        assert attention_mask[:, -1].all()  # left padded
        outs = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            new = self.tok(self.answer(self.tok.decode(ids[mask.bool()])))["input_ids"]
            outs.append(ids.tolist() + new + [257] + self.tok(" and 999")["input_ids"])
        width = max(map(len, outs))
        return torch.tensor([o + [256] * (width - len(o)) for o in outs])


def test_score_sum_uses_generation_and_scores_final_numbers(tok):
    t = GSM8KTask(tok, path=str(GSM8K_DATA), shots=1, max_eval=9, max_length=4096)
    gold = {e.prompt: e.response for e in t.examples["test"]}
    right = Oracle(tok, lambda p: gold[p])
    right.train()
    assert t.score_sum(right, "test", range(9), batch_size=4) == 9.0
    assert right.training  # mode restored
    wrong = Oracle(tok, lambda p: gold[p] + "1")  # "#### 18" -> "#### 181"
    assert t.score_sum(wrong, "test", range(9), batch_size=4) == 0.0
    first_five = Oracle(tok, lambda p: gold[p] if p in list(gold)[:5] else "#### -1")
    assert t.score_sum(first_five, "test", [0, 5, 1, 6, 7], batch_size=2) == 2.0
    # No "####": the last number counts, and what follows eos is not read.
    plain = Oracle(tok, lambda p: "The answer is " + gold[p].rsplit("#### ", 1)[1])
    assert t.score_sum(plain, "test", range(9), batch_size=3) == 9.0
    # Generation prompts keep their end, within max_length - max_new_tokens tokens.
    short = GSM8KTask(
        tok, path=str(GSM8K_DATA), shots=1, max_eval=2, max_length=300, max_new_tokens=100
    )
    seen = []
    spy = Oracle(tok, lambda p: seen.append(p) or "#### 0")
    short.score_sum(spy, "test", range(2), batch_size=2)
    for p, e in zip(seen, short.examples["test"], strict=True):
        assert len(p.encode()) == 200 and e.prompt.endswith(p)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tiny_model_generation_end_to_end(tok, family):
    t = GSM8KTask(tok, path=str(GSM8K_DATA), shots=0, max_new_tokens=12, max_eval=5, max_length=512)
    model = tiny_model(family, vocab=BYTE_VOCAB_SIZE)
    seen = []
    scorer = t.score_generation
    t.score_generation = lambda text, e: seen.append(text) or scorer(text, e)
    model.train()
    one = t.score_sum(model, "test", range(5), batch_size=1)
    assert model.training
    four = t.score_sum(model, "test", range(5), batch_size=4)
    assert isinstance(one, float) and 0.0 <= one <= 5.0 and one == four
    assert len(seen) == 10 and seen[:5] == seen[5:]  # batch size changes nothing
    assert all(len(s.encode()) <= 12 * 3 for s in seen) and any(seen)
