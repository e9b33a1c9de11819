"""The user's jsonl prompt/response task: loading, splits, both metrics, errors."""

import json

import pytest
import torch

from rankstudy.core.spec import BYTE_VOCAB_SIZE
from rankstudy.model.tiny import tiny_model
from rankstudy.model.tokenizer import byte_tokenizer
from rankstudy.tasks.jsonl import JsonlTask

MAX_NEW = 8


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab=BYTE_VOCAB_SIZE)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def pairs(n, start=0):
    return [
        {"prompt": f"add {i} and {i + 1}:", "response": f" {2 * i + 1}"}
        for i in range(start, start + n)
    ]


def greedy(model, tok, prompt: str) -> str:
    """The model's greedy continuation of one prompt, unbatched, cut at eos."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(
        ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=256, eos_token_id=257
    )[0, ids.shape[1] :].tolist()
    return tok.decode(out[: out.index(257)] if 257 in out else out)


def test_exact_match_agrees_with_a_hand_made_scorer(tmp_path, tok, model):
    prompts = [f"q{i}: what is {'ab' * i}?" for i in range(6)]  # lengths differ: padding
    generated = [greedy(model, tok, p) for p in prompts]
    # Half the references are what the model generates (modulo surrounding whitespace).
    responses = [f"  {g}\n" if i % 2 == 0 else g + "x" for i, g in enumerate(generated)]
    test = write(
        tmp_path / "test.jsonl",
        [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)],
    )
    t = JsonlTask(
        tok,
        train=write(tmp_path / "train.jsonl", pairs(20)),
        test=test,
        validation_size=4,
        max_new_tokens=MAX_NEW,
    )
    expected = sum(float(g.strip() == r.strip()) for g, r in zip(generated, responses, strict=True))
    assert expected == 3.0
    for batch_size in (1, 4, 6):
        assert t.score_sum(model, "test", range(6), batch_size) == expected
    assert t.score_sum(model, "test", [1, 3, 5], 2) == 0.0


def test_token_accuracy_equals_an_independent_computation(tmp_path, tok, model):
    rows = [{"q": f"spell {w}:", "a": f" {w} {w}"} for w in ("cat", "dog", "a", "banana", "x")]
    path = write(tmp_path / "train.jsonl", rows)
    t = JsonlTask(
        tok,
        train=path,
        validation=path,
        test=path,
        prompt_field="q",
        response_field="a",
        metric="token_accuracy",
    )
    expected = 0.0
    with torch.no_grad():
        for r in rows:
            p = tok(r["q"])["input_ids"]
            target = tok(r["a"])["input_ids"] + [257]
            logits = model(torch.tensor([p + target])).logits[0]
            pred = logits[len(p) - 1 : -1].argmax(-1)
            expected += (pred == torch.tensor(target)).float().mean().item()
    model.train()
    for batch_size in (1, 2, 5):
        got = t.score_sum(model, "test", range(5), batch_size)
        assert got == pytest.approx(expected, abs=1e-6)
    assert model.training
    model.eval()


def test_missing_splits_are_seeded_slices_of_train(tmp_path, tok):
    train = write(tmp_path / "train.jsonl", pairs(30))
    t = JsonlTask(tok, train=train, validation_size=5, test_size=3)
    assert (t.size("train"), t.size("validation"), t.size("test")) == (22, 5, 3)
    sets = [set(t.examples[s]) for s in ("train", "validation", "test")]
    assert len(set.union(*sets)) == 30
    again = JsonlTask(tok, train=train, validation_size=5, test_size=3)
    assert again.examples == t.examples
    assert JsonlTask(tok, train=train, validation_size=5, seed=1).examples != t.examples
    capped = JsonlTask(tok, train=train, validation_size=5, max_train=4, max_eval=2)
    assert (capped.size("train"), capped.size("validation"), capped.size("test")) == (4, 2, 2)
    batch = capped.collate("train", [0])
    e = capped.examples["train"][0]
    assert batch["labels"][0, : len(e.prompt)].eq(-100).all()
    assert tok.decode(batch["labels"][0, len(e.prompt) :]) == e.response + "<eos>"


def test_bad_input_errors_name_the_field(tmp_path, tok):
    train = write(tmp_path / "train.jsonl", pairs(30))
    with pytest.raises(ValueError, match="validation: no such file .*nope.jsonl"):
        JsonlTask(tok, train=train, validation=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="train: no such file"):
        JsonlTask(tok, train=str(tmp_path / "absent.jsonl"))
    bad = pairs(3)
    del bad[2]["response"]
    with pytest.raises(ValueError, match=r"test: .* line 3 has no string field 'response'"):
        JsonlTask(tok, train=train, test=write(tmp_path / "bad.jsonl", bad))
    with pytest.raises(ValueError, match=r"train: .* line 1 has no string field 'question'"):
        JsonlTask(tok, train=train, prompt_field="question")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=r"train: .* line 2 is not valid JSON"):
        JsonlTask(tok, train=str(tmp_path / "broken.jsonl"))
    with pytest.raises(ValueError, match="metric: unknown metric 'bleu'"):
        JsonlTask(tok, train=train, metric="bleu")
    with pytest.raises(ValueError, match="validation_size"):
        JsonlTask(tok, train=write(tmp_path / "tiny.jsonl", pairs(3)), validation_size=2)


def test_synced_workers_run_as_many_batches_as_the_busiest(tmp_path, tok, model, monkeypatch):
    """Under ZeRO-3 every worker must join every forward: a worker with fewer batches runs
    dummy ones (scores discarded) until it matches the busiest worker."""
    import rankstudy.tasks.text as text

    path = write(tmp_path / "train.jsonl", pairs(6))
    t = JsonlTask(tok, train=path, validation=path, test=path, metric="token_accuracy")
    alone = t.score_sum(model, "test", range(3), batch_size=2)
    calls = []
    chunk = t._score_chunk
    monkeypatch.setattr(t, "_score_chunk", lambda *a: calls.append(a[2]) or chunk(*a))
    monkeypatch.setattr(text.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(text.dist, "all_reduce", lambda tensor, op: tensor.fill_(5))
    t.synced_gpus = True
    assert t.score_sum(model, "test", range(3), batch_size=2) == alone
    assert calls == [[0, 1], [2], [0], [0], [0]]


def test_built_from_its_spec(tmp_path, tok):
    from rankstudy.core.spec import JsonlTaskSpec

    train = write(tmp_path / "train.jsonl", pairs(30))
    spec = JsonlTaskSpec(
        kind="jsonl", train=str(train), metric="token_accuracy", validation_size=5, max_train=10
    )
    t = JsonlTask.from_spec(spec, tok, seed=0)
    assert t.metric == "token_accuracy" and (t.size("train"), t.size("validation")) == (10, 5)
    assert (
        t.examples
        == JsonlTask(
            tok, train=str(train), metric="token_accuracy", validation_size=5, max_train=10
        ).examples
    )
