"""The diagonal P between the LoRA factors, per method.

LoRA, DyLoRA and MatryoshkaLoRA are one layer, delta = x A diag(p) B, with a different p
(DESIGN.md section 1). This module owns everything about p: the rank scale s_r, the fixed
Matryoshka vector, DyLoRA's per-step draw of b, and the inference rules at a rank k.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from rankstudy.ranks import check_choice, check_train_ranks

METHODS = ("lora", "dylora", "matryoshka", "matryoshka_binary", "nested_multiloss")
# Methods that train each rank k with s_k itself (DyLoRA per drawn b, nested_multiloss per
# forward): for them the truncated_p inference rule is the scaled rule.
PER_RANK_SCALE = ("dylora", "nested_multiloss")
SCALINGS = ("none", "rank", "sqrt")
# "scaled": the paper's rule, s_k * x A[:, :k] B[:k] (P dropped at inference).
# "truncated_p": keep the trained P, cut to its first k entries: x A[:, :k] diag(p[:k]) B[:k].
INFERENCE_RULES = ("scaled", "truncated_p")


def rank_scale(r: int, scaling: str, alpha: float = 1.0) -> float:
    """s_r: alpha * 1, alpha / r or alpha / sqrt(r)."""
    check_choice("scaling", scaling, SCALINGS)
    if r <= 0:
        raise ValueError(f"rank: must be positive, got {r}")
    return alpha * {"none": 1.0, "rank": 1.0 / r, "sqrt": 1.0 / math.sqrt(r)}[scaling]


def matryoshka_p(
    max_rank: int, train_ranks: Iterable[int], scaling: str = "sqrt", alpha: float = 1.0
) -> torch.Tensor:
    """p_i = sum of s_r over r in S with r > i (i = 0..max_rank-1), in float64.

    One forward with diag(p) equals the sum over r in S of s_r * x A[:, :r] B[:r]; components
    past max(S) get p_i = 0.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank <= 0:
        raise ValueError(f"max_rank: must be a positive integer, got {max_rank!r}")
    ranks = check_train_ranks(train_ranks, max_rank)
    p = torch.zeros(max_rank, dtype=torch.float64)
    for r in ranks:
        p[:r] += rank_scale(r, scaling, alpha)
    return p


@dataclass
class RankSchedule:
    """Which p a model's adapters use now. One instance is shared by every adapted layer of a
    model, so DyLoRA's draw of b and an inference rank apply to all layers at once."""

    method: str
    max_rank: int
    train_ranks: tuple[int, ...]
    scaling: str = "sqrt"
    alpha: float = 1.0
    inference_rule: str = "scaled"
    seed: int = 0
    # False: DyLoRA draws b at every training forward of the model (a plain loop needs nothing
    # more). True: the training loop calls resample() once per optimizer step, so every
    # micro-batch and every worker of a step trains the same b, whatever the accumulation.
    per_step_draws: bool = False
    # Set by set_rank (inference at rank k) or by resample (DyLoRA's b for this step).
    rank: int | None = None
    sampled_rank: int | None = None
    disabled: bool = False  # adapters_off: every layer returns the base output alone
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("inference_rule", self.inference_rule, INFERENCE_RULES)
        check_choice("scaling", self.scaling, SCALINGS)
        if self.method == "lora":
            self.train_ranks = (self.max_rank,)
        self.train_ranks = check_train_ranks(self.train_ranks, self.max_rank)
        self._rng = random.Random(self.seed)

    # -- training-time p -------------------------------------------------------------------
    def resample(self) -> int:
        """DyLoRA: draw this step's b from S (uniformly, from the seeded generator)."""
        self.sampled_rank = self._rng.choice(self.train_ranks)
        return self.sampled_rank

    def rng_state(self) -> object:
        return self._rng.getstate()

    def set_rng_state(self, state: object) -> None:
        self._rng.setstate(state)

    def trained_p(self) -> torch.Tensor:
        """The fixed p the method trains with (DyLoRA, nested_multiloss: p at rank max_rank)."""
        if self.method == "matryoshka":
            return matryoshka_p(self.max_rank, self.train_ranks, self.scaling, self.alpha)
        if self.method == "matryoshka_binary":
            p = matryoshka_p(self.max_rank, self.train_ranks, self.scaling, self.alpha)
            return p / len(self.train_ranks)
        return torch.full(
            (self.max_rank,),
            rank_scale(self.max_rank, self.scaling, self.alpha),
            dtype=torch.float64,
        )

    def check_rank(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k: inference rank must be an integer, got {k!r}")
        if not 1 <= k <= self.max_rank:
            raise ValueError(f"k: inference rank {k} is outside 1..max_rank={self.max_rank}")
        return k

    def uses_trained_p(self, rule: str | None = None) -> bool:
        """Whether inference at a rank keeps the trained p: the truncated_p rule (the
        schedule's, or `rule`) applied to a method that trains with a fixed p."""
        rule = rule or self.inference_rule
        return rule == "truncated_p" and self.method not in PER_RANK_SCALE

    def scale(self, r: int) -> float:
        return rank_scale(r, self.scaling, self.alpha)
