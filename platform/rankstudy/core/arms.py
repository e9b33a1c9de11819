"""Arms: the things a study tunes, derived from the method registry (rankstudy.core.methods).

A grid method (LoRA) gives one arm per rank, `lora_r<r>`; every other method one arm at the
spec's max rank, named after the method. A served method (spec `methods`) is an arm or arms
under one inference rule: the LoRA grid under "scaled" reads one arm per rank in S, LoRA under
any other rule (lora_svd) its rank-R arm alone, served at every evaluation rank.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rankstudy.core.errors import InputError
from rankstudy.core.methods import (
    INFERENCE_RULES,
    REGISTRY,
    Method,
    Ranks,
    per_rank_runs,
    served,
)
from rankstudy.core.spec import StudySpec

GRID = next(m for m in REGISTRY.values() if m.grid)
# the grid served as one run per rank (its scaled rule): what other methods are read against
GRID_METHOD = next(n for n, rule in GRID.served.items() if rule == "scaled")
# The methods trained as one arm at the spec's max rank: the arm is named after the method.
NESTED = tuple(name for name, m in REGISTRY.items() if not m.grid)


@dataclass(frozen=True)
class Arm:
    name: str
    method: str
    max_rank: int
    train_ranks: tuple[int, ...]
    eval_ranks: tuple[int, ...]
    # a grid arm served as one run (lora_svd): every evaluation rank up to its own
    served_ranks: tuple[int, ...] = ()

    def ranks_for(self, rule: str) -> tuple[int, ...]:
        """The ranks a trial of this arm scores under `rule`."""
        return self.served_ranks if self.kind.grid and rule != "scaled" else self.eval_ranks

    def rules_scored(self, rules: list[str]) -> list[tuple[str, tuple[int, ...]]]:
        """(rule, ranks) a trial scores: each asked-for rule that gives this method a model
        of its own (methods.Method.rules), the first rule whatever it is."""
        kept = [r for r in rules if r in self.kind.rules and r != rules[0]]
        return [(r, self.ranks_for(r)) for r in [rules[0], *kept]]

    @property
    def kind(self) -> Method:
        return REGISTRY[self.method]

    @property
    def nested(self) -> bool:
        return not self.kind.grid

    @property
    def forwards_per_step(self) -> int:
        return self.kind.forwards_per_step(Ranks(self.max_rank, self.train_ranks))


def grid_arm(rank: int) -> str:
    """The name of the grid's arm at `rank` (lora_r4): written here alone, read by parse_arm."""
    return f"{GRID.name}_r{rank}"


GRID_ARM = re.compile(rf"{GRID.name}_r(\d+)")


def parse_arm(name: str, spec: StudySpec) -> Arm:
    """The arm called `name` under this spec; an unknown name is an error naming --arm."""
    a = spec.adapters
    if m := GRID_ARM.fullmatch(name):
        r = int(m.group(1))
        if not 1 <= r <= a.max_rank:
            raise InputError(f"arm: {name!r} has rank {r} outside 1..max_rank={a.max_rank}")
        below = [k for k in a.evaluation_ranks if k < r]
        own = (*below, r) if a.lora_truncations else (r,)
        return Arm(name, GRID.name, r, (r,), own, tuple(dict.fromkeys((*below, r))))
    if name in NESTED:
        return Arm(name, name, a.max_rank, tuple(a.rank_set), tuple(a.evaluation_ranks))
    raise InputError(f"arm: unknown arm {name!r}; expected {GRID.name}_r<rank> or one of {NESTED}")


def method_arms(name: str, spec: StudySpec) -> list[str]:
    """The arms a served method's curve reads: the grid's one per rank in S, LoRA served as
    one run its rank-R arm, else the method's own."""
    kind, rule = served(name)
    if per_rank_runs(kind, rule):
        return [grid_arm(r) for r in spec.adapters.rank_set]
    return [grid_arm(spec.adapters.max_rank)] if kind.grid else [kind.name]


def method_rule(name: str) -> str:
    return served(name)[1]


def study_arms(spec: StudySpec) -> list[str]:
    """Every arm the spec's methods need, each once, in a stable order."""
    return list(dict.fromkeys(a for m in spec.methods for a in method_arms(m, spec)))


def study_rules(spec: StudySpec) -> list[str]:
    """The inference rules trials must evaluate: the paper's first, then any other asked for."""
    return list(dict.fromkeys(["scaled", *(method_rule(m) for m in spec.methods)]))


def arm_rules(arm: str, spec: StudySpec) -> list[str]:
    """The inference rules the spec's methods serve this arm with."""
    return list(dict.fromkeys(method_rule(m) for m in spec.methods if arm in method_arms(m, spec)))


def trial_rules(spec: StudySpec, arm: str) -> list[str]:
    """The inference rules a trial of this arm scores: those the study's methods serve it
    with (adapters.inference_rules where none does, a trial run on its own), in a fixed order."""
    rules = arm_rules(arm, spec) or spec.adapters.inference_rules
    return sorted(rules, key=INFERENCE_RULES.index)
