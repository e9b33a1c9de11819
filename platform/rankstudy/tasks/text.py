"""Prompt/response text tasks: shared batching, loss and scoring for GSM8K and jsonl data.

Training is supervised fine-tuning on the response only: the labels mask the prompt, and the
response ends with the tokenizer's eos so a fine-tuned model learns where to stop. Scoring is
either greedy generation judged per example by the subclass ("generate"), or teacher-forced
next-token accuracy on the response ("token_accuracy"). Scores never depend on the batch size.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from rankstudy.tasks.base import SPLITS, Task

MODES = ("generate", "token_accuracy")
IGNORE = -100  # label value the HF causal-LM loss skips


class Example(NamedTuple):
    prompt: str
    response: str


def holdout(
    n: int, sizes: Sequence[int], seed: int, exclude: int = 0
) -> tuple[list[int], list[list[int]]]:
    """Carve disjoint seeded slices of the given sizes out of range(n), never taking the first
    `exclude` indices (few-shot exemplars). Returns (the rest, [slice, ...]), all in order."""
    pool = list(range(exclude, n))
    if sum(sizes) >= len(pool):
        raise ValueError(f"cannot hold out {sum(sizes)} of {len(pool)} examples")
    random.Random(seed).shuffle(pool)
    slices, start = [], 0
    for size in sizes:
        slices.append(sorted(pool[start : start + size]))
        start += size
    taken = {i for s in slices for i in s}
    return [i for i in range(n) if i not in taken], slices


class PromptResponseTask(Task):
    """Examples per split, a tokenizer and the scoring mode. Subclasses that score by
    generation implement `score_generation`."""

    def __init__(
        self,
        examples: Mapping[str, Sequence[Example]],
        tokenizer,
        max_length: int = 1024,
        mode: str = "generate",
        max_new_tokens: int = 128,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: unknown scoring mode {mode!r}; expected one of {MODES}")
        if set(examples) != set(SPLITS):
            raise ValueError(f"examples: need exactly the splits {SPLITS}, got {sorted(examples)}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("tokenizer: needs a pad and an eos token")
        if max_length < 2:
            raise ValueError(f"max_length: must be at least 2, got {max_length}")
        self.examples = {s: list(examples[s]) for s in SPLITS}
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mode = mode
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_spec(cls, spec, tokenizer, seed: int = 0):
        """From the task's spec (GSM8KTaskSpec, JsonlTaskSpec): its fields are the
        subclass's keyword arguments."""
        return cls(tokenizer, **spec.model_dump(exclude={"kind"}), seed=seed)

    def score_generation(self, text: str, example: Example) -> float:
        """The score in [0, 1] of a generated continuation (eos and what follows removed)."""
        raise NotImplementedError(f"{type(self).__name__} does not score generations")

    def size(self, split: str) -> int:
        return len(self._split(split))

    def _split(self, split: str) -> list[Example]:
        if split not in self.examples:
            raise ValueError(f"split: unknown split {split!r}; expected one of {SPLITS}")
        return self.examples[split]

    def _encode(self, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, response ids + eos) per example, cut to max_length: the prompt loses
        its start first, so the response is kept whole when it fits at all."""
        tok = self.tokenizer
        prompts = tok([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
        responses = tok([e.response for e in examples], add_special_tokens=False)["input_ids"]
        out = []
        for p, r in zip(prompts, responses, strict=True):
            target = [*r, tok.eos_token_id][: self.max_length - min(len(p), 1)]
            room = self.max_length - len(target)
            out.append((p[len(p) - room :] if len(p) > room else p, target))
        return out

    def collate(self, split: str, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding)."""
        pairs = self._encode([self._split(split)[i] for i in indices])
        width = max(len(p) + len(t) for p, t in pairs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        for row, (p, t) in enumerate(pairs):
            n = len(p) + len(t)
            ids[row, :n] = torch.tensor(p + t, dtype=torch.long)
            mask[row, :n] = 1
            labels[row, len(p) : n] = torch.tensor(t, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch, use_cache=False).loss

    def score_sum(
        self, model: nn.Module, split: str, indices: Sequence[int], batch_size: int
    ) -> float:
        indices = list(indices)
        device = next(model.parameters()).device
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        # Under ZeRO-3 every worker must run as many forwards as the busiest one.
        extra = self._synced_count(len(chunks), device) - len(chunks)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                total = sum(sum(self._score_chunk(model, split, c, device)) for c in chunks)
                for _ in range(extra):
                    self._score_chunk(model, split, [0], device)
        finally:
            model.train(was_training)
        return float(total)

    def _synced_count(self, n: int, device: torch.device) -> int:
        if not (self.synced_gpus and dist.is_available() and dist.is_initialized()):
            return n
        count = torch.tensor([n], device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    def _score_chunk(
        self, model: nn.Module, split: str, indices: list[int], device: torch.device
    ) -> list[float]:
        if self.mode == "token_accuracy":
            return self._token_accuracy(model, split, indices, device)
        examples = [self._split(split)[i] for i in indices]
        texts = self.generate(model, [e.prompt for e in examples], device)
        return [self.score_generation(t, e) for t, e in zip(texts, examples, strict=True)]

    def _token_accuracy(
        self, model: nn.Module, split: str, indices: list[int], device: torch.device
    ) -> list[float]:
        """Per example: the share of response tokens (eos included) the model's argmax gets
        right when fed the true prefix."""
        batch = {k: v.to(device) for k, v in self.collate(split, indices).items()}
        labels = batch.pop("labels")[:, 1:]
        logits = model(**batch, use_cache=False).logits[:, :-1]
        scored = labels != IGNORE
        right = (logits.argmax(-1) == labels) & scored
        return (right.sum(1) / scored.sum(1).clamp(min=1)).tolist()

    def generate(self, model: nn.Module, prompts: list[str], device: torch.device) -> list[str]:
        """Greedy continuations of the prompts, cut at the first eos, special tokens dropped."""
        tok = self.tokenizer
        room = max(1, self.max_length - self.max_new_tokens)
        ids = [p[-room:] for p in tok(prompts, add_special_tokens=True)["input_ids"]]
        width = max(len(p) for p in ids)
        input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, p in enumerate(ids):  # left padding: every prompt ends where generation starts
            if p:
                input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p) :] = 1
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            synced_gpus=self.synced_gpus,
        )
        texts = []
        for row in out[:, width:].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            texts.append(tok.decode(row, skip_special_tokens=True))
        return texts
