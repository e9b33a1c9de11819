"""One adapter layer for every method: delta(x) = x A diag(p) B, its products (the method's,
rankstudy.core.methods) from a RankSchedule.

Storage follows PEFT: component i of the adapter is the pair (lora_A[i], lora_B[i]), with
lora_A of shape [R, in] and lora_B of shape [R, out], so the first k components are contiguous
row slices. The forward computes x A[:k]^T first (a [tokens, k] tensor) and never builds a dense
in x out delta; the rank scale is applied on the [tokens, k] side or fused into the final GEMM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from rankstudy.adapters.schedules import RankSchedule
from rankstudy.core.ranks import check_choice

ADAPTABLE = (nn.Linear, Conv1D)
A_INITS = ("peft", "reference")


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (weight [in, out])."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise TypeError(f"{type(module).__name__} is not an nn.Linear or Conv1D")


class NestedLoRA(nn.Module):
    """A frozen base linear layer plus R nested LoRA components, scaled by the shared schedule."""

    def __init__(
        self,
        base: nn.Module,
        schedule: RankSchedule,
        dropout: float = 0.0,
        a_init: str = "peft",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_choice("a_init", a_init, A_INITS)
        self.base = base
        self.schedule = schedule
        self.in_features, self.out_features = linear_shape(base)
        R = schedule.max_rank
        weight = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(R, self.in_features, dtype=weight.dtype, device=weight.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(R, self.out_features, dtype=weight.dtype, device=weight.device)
        )
        # kaiming_uniform(a=sqrt(5)) has bound 1/sqrt(fan_in). PEFT's fan_in is `in` (its
        # nn.Linear(in, r)); the reference code initialises an [in, R] tensor, whose fan_in is R.
        fan_in = self.in_features if a_init == "peft" else R
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            init = torch.empty(self.lora_A.shape, dtype=torch.float32, device="cpu")
            init.uniform_(-bound, bound, generator=generator)
            self.lora_A.copy_(init)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # The method's training p, cut by the truncated_p inference rule. Not saved: it is
        # derived from the schedule, which the adapter file's metadata records.
        p_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.register_buffer("trained_p", schedule.trained_p().to(p_dtype), persistent=False)
        # The svd rules' factors (rankstudy.adapters.svd), made from the trained weights when
        # first served; not saved: they are a function of lora_A, lora_B and the schedule.
        self.svd_A: torch.Tensor | None = None
        self.svd_B: torch.Tensor | None = None
        self.svd_sigma: torch.Tensor | None = None
        self.svd_version: tuple | None = None  # the weights' versions they were made from
        self.svd_rank = 0  # the rank this layer serves under an svd rule now

    def set_svd(self, A: torch.Tensor, B: torch.Tensor, sigma: torch.Tensor) -> None:
        self.svd_A, self.svd_B, self.svd_sigma = A, B, sigma

    def extra_repr(self) -> str:
        s = self.schedule
        return (
            f"in={self.in_features}, out={self.out_features}, method={s.method}, "
            f"max_rank={s.max_rank}, train_ranks={list(s.train_ranks)}, scaling={s.scaling}"
        )

    @staticmethod
    def _rows(factor: torch.Tensor, k: int, frozen: int) -> torch.Tensor:
        """factor[:k] with its first `frozen` rows detached: they count in the forward (the
        same values, bit for bit) but pass no gradient back to the parameter."""
        if not frozen:
            return factor[:k]
        return torch.cat([factor[:frozen].detach(), factor[frozen:k]])

    def _addmm(
        self, out: torch.Tensor, h: torch.Tensor, k: int, scale: float, frozen: int = 0
    ) -> torch.Tensor:
        """out + scale * h @ B[:k], one fused GEMM on the flattened tokens."""
        B = self._rows(self.lora_B, k, frozen)
        flat = torch.addmm(out.reshape(-1, self.out_features), h.reshape(-1, k), B, alpha=scale)
        return flat.view(out.shape)

    def _down(self, x: torch.Tensor, k: int, frozen: int = 0) -> torch.Tensor:
        return F.linear(x, self._rows(self.lora_A, k, frozen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        s = self.schedule
        if s.disabled:  # adapters_off: the base model alone
            return out
        x = self.dropout(x)
        if s.serves_svd():  # the best rank-k approximation of the trained update
            k = self.svd_rank
            if k:
                h = F.linear(x, self.svd_A[:k])
                flat = torch.addmm(
                    out.reshape(-1, self.out_features), h.reshape(-1, k), self.svd_B[:k]
                )
                out = flat.view(out.shape)
            return out
        for k, scale, frozen in s.terms(self.training):  # the method's (rankstudy.core.methods)
            if scale is None:  # diag(p): the trained p, entry by entry
                h = self._down(x, k, frozen) * self.trained_p[:k].to(x.dtype)
                out = self._addmm(out, h, k, 1.0, frozen)
            else:
                out = self._addmm(out, self._down(x, k, frozen), k, scale, frozen)
        return out
