"""Arms: the things a study tunes. `lora_r<r>` (LoRA at rank r), `dylora`, `matryoshka`,
`matryoshka_binary` and `nested_multiloss` (the nested methods at the spec's max rank)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rankstudy.spec import StudySpec

NESTED = ("dylora", "matryoshka", "matryoshka_binary", "nested_multiloss")
# Methods whose inference rules (scaled, truncated_p) give different models: trials score each.
TWO_RULES = ("matryoshka", "matryoshka_binary")


@dataclass(frozen=True)
class Arm:
    name: str
    method: str
    max_rank: int
    train_ranks: tuple[int, ...]
    eval_ranks: tuple[int, ...]

    @property
    def nested(self) -> bool:
        return self.method in NESTED


def parse_arm(name: str, spec: StudySpec) -> Arm:
    """The arm called `name` under this spec; an unknown name is an error naming --arm."""
    a = spec.adapters
    if m := re.fullmatch(r"lora_r(\d+)", name):
        r = int(m.group(1))
        if not 1 <= r <= a.max_rank:
            raise ValueError(f"arm: {name!r} has rank {r} outside 1..max_rank={a.max_rank}")
        below = [k for k in a.evaluation_ranks if k < r] if a.lora_truncations else []
        return Arm(name, "lora", r, (r,), (*below, r))
    if name in NESTED:
        return Arm(name, name, a.max_rank, tuple(a.rank_set), tuple(a.evaluation_ranks))
    raise ValueError(f"arm: unknown arm {name!r}; expected lora_r<rank> or one of {NESTED}")
