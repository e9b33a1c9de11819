"""What a trial needs from a task: batches and a loss for training, a score for evaluation.

Splits are "train", "validation" and "test". Scores are per example in [0, 1]; a trial keeps
each example's (each worker scores a shard) and the split's score is their mean, so it is the
same for one worker or many, and a paired bootstrap can resample the examples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

SPLITS = ("train", "validation", "test")


class Task(ABC):
    """A task bound to one model and tokenizer, with its data loaded."""

    # The name of what score_sum measures (the primary metric: selection and AURAC use it).
    metric: str = "score"
    # Metrics scored beside the primary one (per example, summed like it); see score_sums.
    extra_metrics: tuple[str, ...] = ()
    # Set by the trial: ZeRO-3 over several workers needs every rank in every generate step.
    synced_gpus: bool = False
    # Seconds this process spent on set-up that the study's later trials reuse (the planted
    # task's calibration, or waiting for another trial's): the study's, not this arm's, cost.
    shared_seconds: float = 0.0

    @abstractmethod
    def size(self, split: str) -> int:
        """Number of examples in the split."""

    @abstractmethod
    def collate(self, split: str, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A training batch of these examples (tensors on the CPU)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar training loss of the model on a batch (already on the model's device)."""

    @abstractmethod
    def score_examples(
        self, model: nn.Module, split: str, indices: Sequence[int], batch_size: int
    ) -> dict[str, list[float]]:
        """Each example's score at the model's current rank, in the order of `indices`, per
        metric: "score" (the primary), then each of `extra_metrics`."""

    def score_sums(
        self, model: nn.Module, split: str, indices: Sequence[int], batch_size: int
    ) -> dict[str, float]:
        """Sums over these examples of every metric."""
        return {
            m: sum(v) for m, v in self.score_examples(model, split, indices, batch_size).items()
        }

    def score_sum(
        self, model: nn.Module, split: str, indices: Sequence[int], batch_size: int
    ) -> float:
        """Sum over these examples of their primary scores in [0, 1]."""
        return self.score_sums(model, split, indices, batch_size)["score"]

    def lengths(self, split: str) -> list[int] | None:
        """Tokens of each example, where they differ (the trial batches similar lengths
        together); None where every example has the same length."""
        return None

    def tokens_per_example(self, split: str) -> float:
        """Mean tokens a training example feeds the model (for cost accounting)."""
        batch = self.collate(split, range(min(self.size(split), 64)))
        return batch["input_ids"].numel() / len(batch["input_ids"])

    def reference_curve(self, ranks: Sequence[int]) -> dict[int, float] | None:
        """A reference score per rank, where the task has one (the planted task does)."""
        return None
