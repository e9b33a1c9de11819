"""Which p a model's adapters use now: the method's (rankstudy.core.methods), DyLoRA's draw of b,
or an inference rank k under a rule.

LoRA, DyLoRA and MatryoshkaLoRA are one layer, delta = x A diag(p) B, with a different p
(DESIGN.md section 1). The methods themselves are declared in rankstudy.core.methods; this module
holds the per-model state that applies them: the draw, the rank set now, the rule.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from rankstudy.core.methods import (
    INFERENCE_RULES,
    METHODS,
    SCALINGS,
    SVD_RULES,
    Method,
    Ranks,
    Term,
    method,
    rank_scale,
)
from rankstudy.core.methods import matryoshka_p as _matryoshka_p
from rankstudy.core.ranks import check_choice, check_train_ranks

__all__ = ["INFERENCE_RULES", "METHODS", "SCALINGS", "RankSchedule", "matryoshka_p", "rank_scale"]


def matryoshka_p(
    max_rank: int, train_ranks: Iterable[int], scaling: str = "sqrt", alpha: float = 1.0
) -> torch.Tensor:
    """The Matryoshka p (rankstudy.core.methods.matryoshka_p) as a float64 tensor."""
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank <= 0:
        raise ValueError(f"max_rank: must be a positive integer, got {max_rank!r}")
    check_choice("scaling", scaling, SCALINGS)
    ranks = Ranks(max_rank, check_train_ranks(train_ranks, max_rank), scaling, alpha)
    return torch.tensor(_matryoshka_p(ranks), dtype=torch.float64)


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
    # more). True: the training loop calls resample() itself, once per optimizer step or once
    # per micro-batch (the spec's adapters.rank_draw), the same on every worker.
    per_step_draws: bool = False
    # Set by set_rank (inference at rank k) or by resample (DyLoRA's b for this step).
    rank: int | None = None
    sampled_rank: int | None = None
    disabled: bool = False  # adapters_off: every layer returns the base output alone
    kind: Method = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.kind = method(self.method)
        check_choice("inference_rule", self.inference_rule, INFERENCE_RULES)
        check_choice("scaling", self.scaling, SCALINGS)
        if self.kind.grid:  # a grid run trains its own rank alone
            self.train_ranks = (self.max_rank,)
        self.train_ranks = check_train_ranks(self.train_ranks, self.max_rank)
        self._rng = random.Random(self.seed)

    @property
    def ranks(self) -> Ranks:
        return Ranks(self.max_rank, self.train_ranks, self.scaling, self.alpha)

    # -- training-time p -------------------------------------------------------------------
    def resample(self) -> int | None:
        """A drawing method (DyLoRA, nested_sampled): draw this step's b uniformly, seeded,
        from the ranks the method draws from (methods.Method.draw_from); None when there are
        none (nested_sampled with S = {R}). The generator is the one checkpoints save."""
        pool = self.kind.draw_from(self.ranks)
        self.sampled_rank = self._rng.choice(pool) if pool else None
        return self.sampled_rank

    def rng_state(self) -> object:
        return self._rng.getstate()

    def set_rng_state(self, state: object) -> None:
        self._rng.setstate(state)

    def trained_p(self) -> torch.Tensor:
        """The fixed p the method trains with (methods.Method.p), in float64."""
        return torch.tensor(self.kind.p(self.ranks), dtype=torch.float64)

    def update_scale(self) -> torch.Tensor:
        """q of the update the run trained, delta = A^T diag(q) B (float64): the sum of the
        method's forward outside training (s_R for LoRA at R and DyLoRA, the trained p for
        Matryoshka). The svd rules serve its best rank-k approximations."""
        p, q = self.trained_p(), torch.zeros(self.max_rank, dtype=torch.float64)
        for k, scale, _ in (Term(*t) for t in self.kind.forward(self.ranks, None)):
            q[:k] += p[:k] if scale is None else scale
        return q

    def serves_svd(self) -> bool:
        """Inference at a rank under an svd rule (the layers serve their svd factors)."""
        return self.rank is not None and self.inference_rule in SVD_RULES

    def terms(self, training: bool) -> list[Term]:
        """The products a forward adds now: at the inference rank under its rule, else the
        method's own training forward (with this step's draw while training)."""
        k = self.rank
        if k is not None:
            return [Term(k, None if self.uses_trained_p() else self.scale(k))]
        drawn = self.sampled_rank if training else None
        return [Term(*term) for term in self.kind.forward(self.ranks, drawn)]

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
        return rule == "truncated_p" and not self.kind.per_rank_scale

    def scale(self, r: int) -> float:
        return rank_scale(r, self.scaling, self.alpha)
