"""Analytical compute cost of training and evaluating adapters on a frozen base (DESIGN.md §2).

Per token, a forward through a frozen base with N matmul weights costs 2N FLOPs; training adds
the activation gradients (another 2N) but no weight gradients. The adapters, which do get weight
gradients, cost 6 N_adapter. Attention adds 4 * layers * attn_dim * context per token forward
(QK^T and AV), twice that again in backward. Embedding lookups and elementwise work are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rankstudy.core import methods
from rankstudy.core.ranks import check_train_ranks


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs to know about a model."""

    matmul_params: int  # weights of the base's linear layers, lm_head included, no embeddings
    layers: int
    attn_dim: int  # heads * head_dim: the width of QK^T and AV
    adapter_width: int  # sum of (in + out) over adapted modules: adapter params per unit rank


def _forward_flops_per_token(shape: ModelShape, seq_len: int, rank: float) -> tuple[float, ...]:
    """(base matmuls, adapter matmuls, attention) FLOPs of one token's forward."""
    return (
        2.0 * shape.matmul_params,
        2.0 * rank * shape.adapter_width,
        4.0 * shape.layers * shape.attn_dim * seq_len,
    )


def _train_flops_at_rank(shape: ModelShape, tokens: int, seq_len: int, rank: float) -> float:
    base, adapter, attn = _forward_flops_per_token(shape, seq_len, rank)
    # frozen base: forward + activation grads; adapters: forward + both grads; attention: 1 + 2.
    return tokens * (2 * base + 3 * adapter + 3 * attn)


def train_flops(
    shape: ModelShape,
    tokens: int,
    seq_len: int,
    method: str,
    max_rank: int,
    train_ranks: Sequence[int] = (),
) -> float:
    """FLOPs to train one run of `method` on `tokens` tokens of sequences of seq_len: a forward
    and backward at each of the method's cost ranks a step (rankstudy.core.methods: lora its rank,
    dylora the expected draw from S, matryoshka max(S), matryoshka_binary the |S|
    sub-adapters it sums, nested_multiloss |S| whole forwards and backwards)."""
    kind = methods.method(method)
    ranks = (max_rank,) if kind.grid else check_train_ranks(train_ranks, max_rank)
    per_step = kind.cost_ranks(methods.Ranks(max_rank, ranks))
    return sum(_train_flops_at_rank(shape, tokens, seq_len, r) for r in per_step)


def eval_flops(shape: ModelShape, tokens: int, seq_len: int, ranks: Sequence[int]) -> float:
    """FLOPs of forwards over `tokens` tokens at each rank evaluated."""
    return sum(tokens * sum(_forward_flops_per_token(shape, seq_len, r)) for r in ranks)
