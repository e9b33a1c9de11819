"""Which examples each optimizer step trains on: seeded per-epoch orders, bucketed by length.

The order depends only on the seed and the position in the stream, so a trial resumed from a
checkpoint at step s trains on exactly what an uninterrupted one would, and every worker
computes the same global batch and takes its own slice of it.
"""

from __future__ import annotations

import functools
import math

import torch

from rankstudy.core.spec import StudySpec
from rankstudy.tasks.base import Task

BUCKET_WINDOW = 32  # batches sorted together: wider pads less, narrower mixes lengths more


def total_steps(spec: StudySpec, task: Task, world: int) -> int:
    t = spec.training
    if t.steps is not None:
        return t.steps
    global_batch = t.micro_batch_size * t.grad_accum * world
    return max(1, math.ceil(t.epochs * task.size("train") / global_batch))


def example_order(
    n: int, seed: int, start: int, count: int, lengths: list[int] | None = None, batch: int = 1
) -> list[int]:
    """Positions start..start+count of an endless stream of seeded per-epoch orders. With
    `lengths`, each epoch's permutation is bucketed: within windows of BUCKET_WINDOW batches
    the examples are sorted by length and cut into batches of `batch`, and the batches are
    shuffled, so a batch holds similar lengths and little compute goes to padding."""
    key = tuple(lengths) if lengths else None
    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n)
        out.append(_epoch_order(n, seed, epoch, key, batch)[i])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, lengths: tuple | None, batch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    perm = torch.randperm(n, generator=generator).tolist()
    if lengths is None:
        return perm
    out, width = [], batch * BUCKET_WINDOW
    for lo in range(0, n, width):
        window = sorted(perm[lo : lo + width], key=lambda i: lengths[i])
        batches = [window[j : j + batch] for j in range(0, len(window), batch)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            out.extend(batches[b])
    return out
