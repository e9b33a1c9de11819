"""Prompt/response text tasks: shared batching, loss and scoring for GSM8K and jsonl data.

Training is supervised fine-tuning on the response only: the labels mask the prompt, and the
response ends with the tokenizer's eos so a fine-tuned model learns where to stop. A task scores
one primary metric (selection and AURAC use it) and any extra metrics beside it, each per
example: "exact_match" (greedy generation judged per example by the subclass),
"token_accuracy" (teacher-forced next-token accuracy on the response) and "token_nll" (its mean
negative log-likelihood, lower is better; one forward gives both). Scores never depend on the
batch size. With `chat_template`, prompts are rendered through the tokenizer's chat template
(an instruction-tuned model's own format) and the response is the assistant's turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rankstudy.core.errors import InputError
from rankstudy.tasks.base import SPLITS, Task
from rankstudy.tasks.rows import Example

METRICS = ("exact_match", "token_accuracy", "token_nll")
PRIMARY_METRICS = ("exact_match", "token_accuracy")  # higher is better: usable for selection
TEACHER_FORCED = ("token_accuracy", "token_nll")
IGNORE = -100  # label value the HF causal-LM loss skips


def check_metrics(metric: str, extra_metrics: Sequence[str]) -> None:
    """Errors name the field: a primary metric usable for selection, distinct extras."""
    if metric not in PRIMARY_METRICS:
        raise ValueError(
            f"metric: unknown metric {metric!r}; expected one of {list(PRIMARY_METRICS)}"
        )
    unknown = [m for m in extra_metrics if m not in METRICS or m == metric]
    if unknown:
        raise ValueError(
            f"extra_metrics: {unknown} are not metrics besides {metric!r} "
            f"(known: {', '.join(METRICS)})"
        )


def chat_prompt(tokenizer, turns: Sequence[tuple[str, str]], question: str) -> str:
    """The prompt as the tokenizer's chat template renders it: solved (user, assistant) turns,
    then the question, then the start of the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("task.chat_template: the model's tokenizer has no chat template")
    messages = [
        {"role": role, "content": text}
        for user, assistant in turns
        for role, text in (("user", user), ("assistant", assistant))
    ]
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class PromptResponseTask(Task):
    """Examples per split, a tokenizer and the metrics. Subclasses that score by generation
    implement `score_generation`. chat_template: the prompts are already rendered through the
    tokenizer's chat template (which adds its own special tokens)."""

    def __init__(
        self,
        examples: Mapping[str, Sequence[Example]],
        tokenizer,
        max_length: int = 1024,
        metric: str = "exact_match",
        max_new_tokens: int = 128,
        extra_metrics: Sequence[str] = (),
        chat_template: bool = False,
    ) -> None:
        check_metrics(metric, extra_metrics)
        if set(examples) != set(SPLITS):
            raise ValueError(f"examples: need exactly the splits {SPLITS}, got {sorted(examples)}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("tokenizer: needs a pad and an eos token")
        if max_length < 2:
            raise ValueError(f"max_length: must be at least 2, got {max_length}")
        self.examples = {s: list(examples[s]) for s in SPLITS}
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.metric = metric
        self.extra_metrics = tuple(extra_metrics)
        self.max_new_tokens = max_new_tokens
        self.add_special_tokens = not chat_template  # the template writes its own
        self._encoded: dict[str, list[tuple[list[int], list[int]]]] = {}

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

    def lengths(self, split: str) -> list[int]:
        return [len(p) + len(t) for p, t in self._encoded_split(split)]

    def _encoded_split(self, split: str) -> list[tuple[list[int], list[int]]]:
        """Every example of the split encoded, once."""
        if split not in self._encoded:
            self._encoded[split] = self._encode(self._split(split))
        return self._encoded[split]

    def _encode(self, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, response ids + eos) per example, cut to max_length: the prompt loses
        its start first, so the response is kept whole when it fits at all."""
        tok = self.tokenizer
        prompts = tok([e.prompt for e in examples], add_special_tokens=self.add_special_tokens)[
            "input_ids"
        ]
        responses = tok([e.response for e in examples], add_special_tokens=False)["input_ids"]
        out = []
        for p, r in zip(prompts, responses, strict=True):
            target = [*r, tok.eos_token_id][: self.max_length - min(len(p), 1)]
            room = self.max_length - len(target)
            out.append((p[len(p) - room :] if len(p) > room else p, target))
        return out

    def collate(self, split: str, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding)."""
        encoded = self._encoded_split(split)
        pairs = [encoded[i] for i in indices]
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

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric, *self.extra_metrics)

    def score_examples(
        self, model: nn.Module, split: str, indices: Sequence[int], batch_size: int
    ) -> dict[str, list[float]]:
        # Longest first, in chunks of similar length: little compute goes to padding.
        lengths = self.lengths(split)
        order = sorted(indices, key=lambda i: (-lengths[i], i))
        device = next(model.parameters()).device
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        # Under ZeRO-3 every worker must run as many forwards as the busiest one.
        extra = self._synced_count(len(chunks), device) - len(chunks)
        by_index: dict[str, dict[int, float]] = {m: {} for m in self.metrics}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for chunk in chunks:
                    for name, values in self._score_chunk(model, split, chunk, device).items():
                        by_index[name].update(zip(chunk, values, strict=True))
                for _ in range(extra):
                    self._score_chunk(model, split, [0], device)
        finally:
            model.train(was_training)
        scores = {m: [by_index[m][i] for i in indices] for m in self.metrics}
        return {"score": scores[self.metric]} | {m: scores[m] for m in self.extra_metrics}

    def _synced_count(self, n: int, device: torch.device) -> int:
        if not (self.synced_gpus and dist.is_available() and dist.is_initialized()):
            return n
        count = torch.tensor([n], device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    def _score_chunk(
        self, model: nn.Module, split: str, indices: list[int], device: torch.device
    ) -> dict[str, list[float]]:
        """Per metric, the score of each example."""
        out = {}
        if any(m in TEACHER_FORCED for m in self.metrics):
            accuracy, nll = self._teacher_forced(model, split, indices, device)
            out |= {"token_accuracy": accuracy, "token_nll": nll}
        if "exact_match" in self.metrics:
            examples = [self._split(split)[i] for i in indices]
            texts = self.generate(model, [e.prompt for e in examples], device)
            out["exact_match"] = [
                self.score_generation(t, e) for t, e in zip(texts, examples, strict=True)
            ]
        return {m: out[m] for m in self.metrics}

    def _teacher_forced(
        self, model: nn.Module, split: str, indices: list[int], device: torch.device
    ) -> tuple[list[float], list[float]]:
        """Per example, fed the true prefix: the share of response tokens (eos included) the
        model's argmax gets right, and their mean negative log-likelihood."""
        batch = {k: v.to(device) for k, v in self.collate(split, indices).items()}
        labels = batch.pop("labels")[:, 1:]
        logits = model(**batch, use_cache=False).logits[:, :-1].float()
        scored = labels != IGNORE
        count = scored.sum(1).clamp(min=1)
        right = (logits.argmax(-1) == labels) & scored
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        return (right.sum(1) / count).tolist(), (nll.sum(1) / count).tolist()

    def generate(self, model: nn.Module, prompts: list[str], device: torch.device) -> list[str]:
        """Greedy continuations of the prompts, cut at the first eos, special tokens dropped."""
        tok = self.tokenizer
        room = max(1, self.max_length - self.max_new_tokens)
        encoded = tok(prompts, add_special_tokens=self.add_special_tokens)["input_ids"]
        ids = [p[-room:] for p in encoded]
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
