"""The local byte tokenizer: exact round trips, fixed special ids, save/load, padding."""

import pytest
import torch
from transformers import AutoTokenizer

from rankstudy.core.spec import BYTE_VOCAB_SIZE
from rankstudy.model.tiny import tiny_model
from rankstudy.model.tokenizer import byte_tokenizer, load_tokenizer

TEXTS = [
    "Janet’s ducks lay 16 eggs per day.",
    "naïve café, 東京, emoji 🦆🧮, math ∑ x² ≤ ∞",
    "  leading and trailing spaces \t\n\n",
    "control \x00\x01\x7f bytes and a literal <eos> and <pad>",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact_and_ids_are_bytes(text):
    tok = byte_tokenizer()
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_special_tokens_and_vocab():
    tok = byte_tokenizer()
    assert BYTE_VOCAB_SIZE == 258 and len(tok) == BYTE_VOCAB_SIZE
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 256)
    assert (tok.eos_token, tok.eos_token_id) == ("<eos>", 257)
    assert tok.bos_token is None
    assert tok("abc")["input_ids"] == [97, 98, 99]  # nothing added around the text
    assert tok.decode([104, 105, 257, 256, 256], skip_special_tokens=True) == "hi"
    assert tok.convert_ids_to_tokens([256, 257]) == ["<pad>", "<eos>"]


def test_save_and_load_back_gives_same_ids(tmp_path):
    tok = byte_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.decode(tok(text)["input_ids"]) == text
    assert (loaded.pad_token_id, loaded.eos_token_id) == (256, 257)
    assert load_tokenizer(str(tmp_path))("Janet’s")["input_ids"] == tok("Janet’s")["input_ids"]


def test_load_tokenizer_sets_missing_pad_to_eos(tmp_path):
    tok = byte_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "<eos>" and loaded.pad_token_id == 257
    assert load_tokenizer(None).pad_token_id == 256


def test_left_padding_and_generate():
    tok = byte_tokenizer()
    batch = tok(["hi", "hello"], padding=True, padding_side="left", return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [256, 256, 256, 104, 105]
    assert batch["attention_mask"][0].tolist() == [0, 0, 0, 1, 1]
    model = tiny_model("llama", vocab=BYTE_VOCAB_SIZE)
    out = model.generate(
        **batch, max_new_tokens=5, do_sample=False, pad_token_id=256, eos_token_id=257
    )
    assert out.shape[0] == 2 and out.shape[1] <= 10
    assert out[:, :5].tolist() == batch["input_ids"].tolist()
    alone = model.generate(
        **tok(["hi"], return_tensors="pt"),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=256,
        eos_token_id=257,
    )
    assert torch.equal(out[0, 5 : 5 + alone.shape[1] - 2], alone[0, 2:])
