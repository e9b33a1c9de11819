"""The adapter settings that the spec, the plan and the adapters all check: rank sets and
named choices. No torch here, so validating a spec costs no deep-learning import."""

from __future__ import annotations

from collections.abc import Iterable


def powers_of_two(max_rank: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to max_rank: the usual rank set S."""
    return tuple(2**i for i in range(max_rank.bit_length()) if 2**i <= max_rank)


def check_train_ranks(train_ranks: Iterable[int], max_rank: int) -> tuple[int, ...]:
    """Sorted distinct training ranks <= max_rank; ranks above max_rank are dropped, as the
    reference code does, but a set with nothing left is an error."""
    ranks = list(train_ranks)
    if not ranks:
        raise ValueError("train_ranks: empty; give at least one rank in 1..max_rank")
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int):
            raise ValueError(f"train_ranks: {r!r} is not an integer")
        if r <= 0:
            raise ValueError(f"train_ranks: {r} is not a positive rank")
    kept = tuple(sorted({r for r in ranks if r <= max_rank}))
    if not kept:
        raise ValueError(f"train_ranks: every rank in {sorted(ranks)} is above max_rank={max_rank}")
    return kept


def check_choice(argument: str, value: str, choices: tuple[str, ...]) -> str:
    """A ValueError naming the argument when value is not one of choices (a method, a scaling,
    an inference rule)."""
    if value not in choices:
        raise ValueError(f"{argument}: unknown value {value!r}; expected one of {choices}")
    return value
