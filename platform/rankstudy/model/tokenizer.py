"""Tokenizers: a byte-level one built locally for tiny models, or a pretrained model's own.

The byte tokenizer needs no download and no training: token i is byte i (0..255), so every
UTF-8 string round-trips exactly, and a tiny model with vocab >= BYTE_VOCAB_SIZE can read and
write text tasks on a laptop. transformers is imported only when a tokenizer is made, so the
spec reads its size (rankstudy.core.spec.BYTE_VOCAB_SIZE) without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
PAD_ID, EOS_ID = 256, 257


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens (id = byte value), then <pad> = 256 and <eos> = 257; no BOS is added."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # ByteLevel maps each byte to one printable character; a BPE without merges then gives
    # exactly one token per byte, and the ByteLevel decoder maps the characters back.
    tok = Tokenizer(models.BPE(vocab=_byte_vocab(), merges=[]))
    tok.add_special_tokens([AddedToken(PAD, special=True), AddedToken(EOS, special=True)])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
        model_max_length=1 << 30,
    )
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID)
    return tokenizer


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-character table: byte b is the token string bytes_to_unicode()[b]."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {chars[b]: b for b in range(256)}


def load_tokenizer(
    name_or_path: str | None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The byte tokenizer for None (tiny models); otherwise the model's own tokenizer, with
    pad = eos where it has no pad token (generation and batching need one)."""
    if name_or_path is None:
        return byte_tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
