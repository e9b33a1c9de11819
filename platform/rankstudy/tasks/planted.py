"""The planted task: a teacher made of the frozen base plus planted low-rank deltas.

Students (the base with adapters) learn to match the teacher's next-token distribution on
random token sequences; the score is top-1 agreement with the teacher on held-out sequences.
Rank matters by construction: the planted deltas have rank `planted_rank` and a decaying
singular spectrum, and their top-k truncations give a reference curve (not an upper bound).
The shift, the share of the base's top-1 predictions the teacher changes, sets the regime.

The deltas lie in the adapters' target modules unless `teacher_targets` names others (say the
MLP, with students on attention): then the best rank-k student is no truncation of the teacher.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from rankstudy.adapters.layer import ADAPTABLE, Conv1D
from rankstudy.core.errors import InputError
from rankstudy.core.spec import PlantedTaskSpec
from rankstudy.core.targets import match_targets
from rankstudy.tasks.base import Task


@dataclass
class PlantedDelta:
    """delta = scale * U diag(sigma) V^T for one module (U: out x r, V: in x r, orthonormal)."""

    module: str
    U: torch.Tensor
    sigma: torch.Tensor
    V: torch.Tensor

    def dense(self, scale: float, k: int | None = None) -> torch.Tensor:
        """The [out, in] delta at `scale`, truncated to its top-k singular directions."""
        k = len(self.sigma) if k is None else k
        return scale * (self.U[:, :k] * self.sigma[:k]) @ self.V[:, :k].T


def plant_deltas(
    model: nn.Module, targets: list[str], rank: int, decay: float = 1.0, seed: int = 0
) -> list[PlantedDelta]:
    """A random rank-`rank` delta per target module with sigma_i = ||W||_2 / i^decay."""
    try:
        chosen = set(match_targets(linear_names(model), targets))
    except InputError as e:  # names the target that matches nothing
        raise InputError(f"targets: {str(e).removeprefix('target_modules: ')}") from None
    gen = torch.Generator().manual_seed(seed)
    deltas = []
    for name, module in model.named_modules():
        if name not in chosen:
            continue
        W = _weight_out_in(module).float()
        out_f, in_f = W.shape
        r = min(rank, out_f, in_f)
        U, _ = torch.linalg.qr(torch.randn(out_f, r, generator=gen))
        V, _ = torch.linalg.qr(torch.randn(in_f, r, generator=gen))
        top = torch.linalg.matrix_norm(W, ord=2)
        sigma = top / torch.arange(1, r + 1, dtype=torch.float32) ** decay
        deltas.append(PlantedDelta(name, U, sigma, V))
    return deltas


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE)]


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def teacher_model(
    base: nn.Module, deltas: list[PlantedDelta], scale: float, k: int | None = None
) -> nn.Module:
    """A copy of the base with every planted delta (truncated to rank k) added to its weight."""
    teacher = copy.deepcopy(base).eval()
    with torch.no_grad():
        for d in deltas:
            module = teacher.get_submodule(d.module)
            delta = d.dense(scale, k).to(module.weight.dtype)
            module.weight.add_(delta.T if isinstance(module, Conv1D) else delta)
    return teacher


@torch.no_grad()
def logits_of(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [
            model(inputs[i : i + batch_size]).logits.float()
            for i in range(0, len(inputs), batch_size)
        ]
    )


def shift_of(base_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Share of positions where the teacher's top-1 differs from the base's."""
    return (base_logits.argmax(-1) != teacher_logits.argmax(-1)).float().mean().item()


def find_scale(
    base: nn.Module,
    deltas: list[PlantedDelta],
    inputs: torch.Tensor,
    shift: float,
    iterations: int = 18,
) -> tuple[float, float]:
    """Bisect (on a log scale) the delta scale whose teacher shifts `shift` of the base's top-1
    predictions on `inputs`. Returns (scale, achieved shift)."""
    if not 0.0 < shift < 1.0:
        raise ValueError(f"shift: must be in (0, 1), got {shift}")
    base_logits = logits_of(base, inputs)
    lo, hi = math.log(1e-3), math.log(1e2)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        got = shift_of(base_logits, logits_of(teacher_model(base, deltas, math.exp(mid)), inputs))
        lo, hi = (mid, hi) if got < shift else (lo, mid)
    scale = math.exp((lo + hi) / 2)
    return scale, shift_of(base_logits, logits_of(teacher_model(base, deltas, scale), inputs))


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's full next-token distribution."""
    target = F.softmax(teacher_logits.float(), dim=-1)
    return -(target * F.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Top-1 agreement with the teacher: the planted task's score."""
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()


class PlantedTask(Task):
    """The planted task bound to a base model (before adapters are attached to it).

    Inputs are random token sequences; the teacher's logits on them are computed once. The
    delta scale is searched on the validation inputs, never on test. targets: the modules the
    students adapt, and the teacher's unless spec.teacher_targets names its own.
    """

    metric = "teacher_agreement"  # top-1 agreement with the teacher

    def __init__(
        self,
        base: nn.Module,
        spec: PlantedTaskSpec,
        targets: list[str],
        reference_ranks: Sequence[int] = (),
        seed: int = 0,
        cache: Path | None = None,
    ) -> None:
        vocab = base.config.vocab_size
        gen = torch.Generator().manual_seed(seed)
        sizes = {
            "train": spec.train_size,
            "validation": spec.validation_size,
            "test": spec.test_size,
        }
        self.inputs = {
            s: torch.randint(0, vocab, (n, spec.seq_len), generator=gen) for s, n in sizes.items()
        }
        teacher_targets = spec.teacher_targets or targets
        try:
            deltas = plant_deltas(base, teacher_targets, spec.planted_rank, spec.decay, seed=seed)
        except InputError as e:
            if spec.teacher_targets is None:
                raise
            raise InputError(f"task.teacher_targets: {str(e).removeprefix('targets: ')}") from None
        # A rank-k truncation of the deltas is a rank-k adapter only if every delta lies in an
        # adapted module; a teacher elsewhere (the MLP, students on attention) has no reference.
        adapted = set(match_targets(linear_names(base), targets))
        if not all(d.module in adapted for d in deltas):
            reference_ranks = ()
        # The calibration (delta scale, base score, reference curve) is a function of the spec
        # and seed alone: a study computes it in its first trial and every later process reads
        # it. The lock makes trials that start together wait for one calibration, not each run it.
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
        tic = time.perf_counter()
        with FileLock(cache.with_suffix(".lock")) if cache is not None else nullcontext():
            waited = time.perf_counter() - tic
            self.shared_seconds = waited + self._calibrate(
                base, deltas, spec, reference_ranks, cache
            )

    def _calibrate(
        self,
        base: nn.Module,
        deltas: list[PlantedDelta],
        spec: PlantedTaskSpec,
        reference_ranks: Sequence[int],
        cache: Path | None,
    ) -> float:
        """Returns the seconds spent computing what the cache keeps for later trials (the
        teacher's logits are this process's own work)."""
        known = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
        tic = time.perf_counter()
        if "scale" in known:
            self.scale, self.shift = known["scale"], known["shift"]
        else:
            self.scale, self.shift = find_scale(base, deltas, self.inputs["validation"], spec.shift)
        shared = time.perf_counter() - tic
        teacher = teacher_model(base, deltas, self.scale)
        self.teacher = {s: logits_of(teacher, x) for s, x in self.inputs.items()}
        test = self.inputs["test"]
        tic = time.perf_counter()
        self.base_score = known.get("base_score") or agreement(
            logits_of(base, test), self.teacher["test"]
        )
        self.reference = {int(k): v for k, v in known.get("reference", {}).items()}
        for k in reference_ranks:
            if k not in self.reference:
                truncated = teacher_model(base, deltas, self.scale, k)
                self.reference[k] = agreement(logits_of(truncated, test), self.teacher["test"])
        shared += time.perf_counter() - tic
        if cache is not None:
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "scale": self.scale,
                        "shift": self.shift,
                        "base_score": self.base_score,
                        "reference": self.reference,
                    }
                )
            )
            tmp.replace(cache)  # atomic: concurrent trials never read half a file
        return shared

    def size(self, split: str) -> int:
        return len(self.inputs[split])

    def collate(self, split: str, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"input_ids": self.inputs[split][idx], "teacher_logits": self.teacher[split][idx]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return soft_cross_entropy(model(batch["input_ids"]).logits, batch["teacher_logits"])

    @torch.no_grad()
    def score_examples(
        self, model: nn.Module, split: str, indices: Sequence[int], batch_size: int
    ) -> dict[str, list[float]]:
        """Each sequence's share of positions where the student's top-1 is the teacher's."""
        device = next(model.parameters()).device
        scores: list[float] = []
        indices = list(indices)
        for i in range(0, len(indices), batch_size):
            batch = self.collate(split, indices[i : i + batch_size])
            logits = model(batch["input_ids"].to(device)).logits
            same = logits.argmax(-1).cpu() == batch["teacher_logits"].argmax(-1)
            scores += same.float().mean(-1).tolist()
        return {"score": scores}

    def reference_curve(self, ranks: Sequence[int]) -> dict[int, float] | None:
        """The teacher truncated to rank k, per k; None when the teacher has modules the
        students do not adapt (no rank-k adapter can express that truncation)."""
        return {k: self.reference[k] for k in ranks if k in self.reference} or None
