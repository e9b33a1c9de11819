"""Serving a trained adapter at rank k by SVD (DESIGN.md section 9).

Per layer, the run trained the update delta = A^T diag(q) B (A: [R, in], B: [R, out], q the
method's scale vector at its maximum rank). Its best rank-k approximation in Frobenius norm
(Eckart-Young) comes from thin QRs of the two factors and the SVD of an R x R core, in float64,
never building the in x out matrix:

    A^T = Qa Ra,  B^T = Qb Rb,  Ra diag(q) Rb^T = U S V^T,  delta = (Qa U) S (Qb V)^T

The served factors are A_s = (Qa U S^1/2)^T and B_s = S^1/2 (Qb V)^T, so the first k rows of
each are the rank-k approximation, served with scale 1. "svd" serves every layer at k;
"svd_global" spreads k x layers components over the layers by their singular values, the
largest first (the closest update of that total rank, summed over layers). Factors are
recomputed only when the adapter's weights have changed since the last time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from rankstudy.adapters.layer import NestedLoRA

Gather = Callable[[list[torch.nn.Parameter]], AbstractContextManager]


def svd_factors(
    A: torch.Tensor, B: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A_s [R, in], B_s [R, out], singular values [R], descending) of A^T diag(q) B, in
    float64; rows past the update's rank are zero."""
    R = A.shape[0]
    A, B, q = A.double(), B.double(), q.double()
    Qa, Ra = torch.linalg.qr(A.T)  # in x m, m x R (m = min(in, R))
    Qb, Rb = torch.linalg.qr(B.T)
    U, S, Vh = torch.linalg.svd((Ra * q) @ Rb.T, full_matrices=False)
    root = S.sqrt()
    A_s = ((Qa @ U) * root).T
    B_s = root[:, None] * (Qb @ Vh.T).T
    n = len(S)
    if n < R:  # a factor narrower than R (in or out below R): the rest is zero
        A_s = torch.cat([A_s, A_s.new_zeros(R - n, A_s.shape[1])])
        B_s = torch.cat([B_s, B_s.new_zeros(R - n, B_s.shape[1])])
        S = torch.cat([S, S.new_zeros(R - n)])
    return A_s, B_s, S


def prepare_svd(layers: dict[str, NestedLoRA], gather: Gather | None = None) -> None:
    """Compute each layer's served factors from its weights now (skipped where they are
    unchanged since the last call). gather(params): a context in which partitioned parameters
    are whole (ZeRO-3's; the trial passes it); without one, partitioned layers keep the
    factors made inside the last gather."""
    for layer in layers.values():
        A, B = layer.lora_A, layer.lora_B
        if gather is None and A.numel() == 0:  # partitioned, and no way to gather it here
            if layer.svd_A is None:
                raise ValueError(
                    "model: its adapters are partitioned (ZeRO-3): call "
                    "prepare_svd(layers, gather) with the engine's gather first"
                )
            continue
        with gather([A, B]) if gather is not None else contextlib.nullcontext(), torch.no_grad():
            version = (A._version, B._version, A.data_ptr(), B.data_ptr())
            if layer.svd_version == version:
                continue
            A_s, B_s, S = svd_factors(A, B, layer.schedule.update_scale().to(A.device))
            layer.set_svd(A_s.to(A.dtype), B_s.to(B.dtype), S)
            layer.svd_version = version


def allocate_global(sigmas: dict[str, torch.Tensor], budget: int) -> dict[str, int]:
    """Each layer's rank when `budget` components go to the largest singular values over
    all layers (ties to the earlier layer, then the earlier component)."""
    pool = [(-float(s), i, j) for i, sig in enumerate(sigmas.values()) for j, s in enumerate(sig)]
    counts = dict.fromkeys(sigmas, 0)
    names = list(sigmas)
    for _, i, _ in sorted(pool)[:budget]:
        counts[names[i]] += 1
    return counts


def served_ranks(layers: dict[str, NestedLoRA], k: int, rule: str) -> dict[str, int]:
    """The rank each layer serves at rank k under an svd rule."""
    if rule == "svd":
        return dict.fromkeys(layers, k)
    return allocate_global({n: layer.svd_sigma for n, layer in layers.items()}, k * len(layers))


def set_svd_rank(layers: dict[str, NestedLoRA], k: int, rule: str) -> None:
    """Prepare the factors and set each layer's served rank for rank k under `rule`."""
    prepare_svd(layers)
    for name, r in served_ranks(layers, k, rule).items():
        layers[name].svd_rank = r
