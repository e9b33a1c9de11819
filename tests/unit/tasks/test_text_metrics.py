"""Text tasks beyond exact match: teacher-forced token accuracy and NLL scored side by side,
prompts rendered through a chat template, and length-bucketed batches."""

import pytest
import torch

from rankstudy.core.spec import BYTE_VOCAB_SIZE
from rankstudy.model.tiny import tiny_model
from rankstudy.model.tokenizer import byte_tokenizer
from rankstudy.tasks.gsm8k import GSM8KTask
from rankstudy.tasks.text import IGNORE
from rankstudy.trial.batches import example_order
from studies import GSM8K_DATA

# A chat template of the usual shape, on the byte tokenizer (which ships none).
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def gsm8k(tok, **kw) -> GSM8KTask:
    args = dict(path=str(GSM8K_DATA), max_length=512, validation_size=6, max_eval=6, max_train=40)
    return GSM8KTask(tok, **(args | kw))


def test_token_nll_is_the_models_own_loss_per_example(tok):
    """token_nll of an example equals the HF causal-LM loss on it alone (the mean NLL of its
    response tokens); token_accuracy counts argmax hits by hand; both independent of the
    batch size."""
    task = gsm8k(tok, metric="token_accuracy", extra_metrics=["token_nll"])
    model = tiny_model("llama", vocab=BYTE_VOCAB_SIZE, hidden=32, heads=2, intermediate=64)
    nll, right = [], []
    for i in range(6):
        batch = task.collate("test", [i])
        with torch.no_grad():
            out = model(**batch)
        nll.append(out.loss.item())
        labels = batch["labels"][0, 1:]
        hits = (out.logits[0, :-1].argmax(-1) == labels)[labels != IGNORE]
        right.append(hits.float().mean().item())
    for batch_size in (1, 4, 6):
        sums = task.score_sums(model, "test", range(6), batch_size)
        assert set(sums) == {"score", "token_nll"}
        assert sums["token_nll"] == pytest.approx(sum(nll), rel=1e-5)
        assert sums["score"] == pytest.approx(sum(right), abs=1e-6)
    assert task.score_sum(model, "test", range(6), 2) == pytest.approx(sum(right), abs=1e-6)


def test_exact_match_with_token_metrics_beside_it(tok):
    task = gsm8k(tok, metric="exact_match", extra_metrics=["token_accuracy", "token_nll"])
    task.max_new_tokens = 4
    model = tiny_model("llama", vocab=BYTE_VOCAB_SIZE, hidden=32, heads=2, intermediate=64)
    sums = task.score_sums(model, "test", range(3), 3)
    assert set(sums) == {"score", "token_accuracy", "token_nll"} and sums["score"] == 0.0
    alone = gsm8k(tok, metric="token_accuracy").score_sums(model, "test", range(3), 3)
    assert sums["token_accuracy"] == pytest.approx(alone["score"], abs=1e-6)


@pytest.mark.parametrize(
    "metric,extra,message",
    [
        ("token_nll", [], "metric: unknown metric 'token_nll'"),
        ("token_accuracy", ["token_accuracy"], "extra_metrics: \\['token_accuracy'\\]"),
        ("exact_match", ["bleu"], "extra_metrics: \\['bleu'\\]"),
    ],
)
def test_metric_errors_name_the_field(tok, metric, extra, message):
    with pytest.raises(ValueError, match=message):
        gsm8k(tok, metric=metric, extra_metrics=extra)


def test_chat_template_renders_the_prompt_and_the_answer_is_the_assistant_turn(tok):
    templated = byte_tokenizer()
    templated.chat_template = TEMPLATE
    task = gsm8k(templated, chat_template=True, shots=1, strip_annotations=True)
    example = task.examples["test"][0]
    shot = task.exemplars[0]
    assert example.prompt.startswith(f"<|user|>{shot['question']}\n<|assistant|>")
    assert example.prompt.endswith("<|assistant|>") and "Question:" not in example.prompt
    assert "<<" not in example.response and not example.response.startswith(" ")
    batch = task.collate("test", [0])
    labels = batch["labels"][0]
    target = labels[labels != IGNORE].tolist()
    assert target == [*templated(example.response)["input_ids"], templated.eos_token_id]
    with pytest.raises(ValueError, match="task.chat_template: the model's tokenizer has no chat"):
        gsm8k(tok, chat_template=True)


def test_bucketed_order_is_a_permutation_with_little_padding():
    """Each epoch still visits every example once, in a seeded order; batches hold similar
    lengths; without lengths the order is the plain per-epoch permutation it always was."""
    n, batch = 1000, 8
    lengths = torch.randint(20, 400, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    order = example_order(n, 3, 0, 2 * n, lengths, batch)
    assert sorted(order[:n]) == sorted(order[n:]) == list(range(n)) and order[:n] != order[n:]
    assert example_order(n, 3, 0, 2 * n, lengths, batch) == order
    plain = torch.randperm(n, generator=torch.Generator().manual_seed(3 * 7919)).tolist()
    assert example_order(n, 3, 0, n) == plain

    def padding(o):
        steps = [o[i : i + batch] for i in range(0, n, batch)]
        return sum(len(s) * max(lengths[i] for i in s) - sum(lengths[i] for i in s) for s in steps)

    assert padding(order[:n]) < 0.1 * padding(plain)
    # the batches are not sorted across the epoch: early and late steps mix short and long
    means = [sum(lengths[i] for i in order[j : j + batch]) / batch for j in range(0, n, batch)]
    assert max(means[:20]) - min(means[:20]) > 100
