"""The training methods, each declared once: everything else asks this registry.

Every method trains the one adapter layer, delta(x) = x A diag(p) B (DESIGN.md section 1); a
method is the p it trains with, the forwards it runs a step, the inference rules that serve it
and what it costs. To add a method, add one `Method` to `REGISTRY` below and its tests: the
layer, the trial, the cost model, the spec, the search and the report read it from here.

Pure Python on purpose: the spec, the plan and the report read it without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from rankstudy.core.ranks import check_choice

SCALINGS = ("none", "rank", "sqrt")
# "scaled": the paper's rule, s_k * x A[:, :k] B[:k] (P dropped at inference).
# "truncated_p": keep the trained P, cut to its first k entries: x A[:, :k] diag(p[:k]) B[:k].
# "svd": per layer, the best rank-k approximation (Frobenius) of the update the run trained,
#   A^T diag(q) B with q the method's p at its maximum rank (DESIGN.md section 9).
# "svd_global": the same factors, with k x layers components spread over the layers by their
#   singular values (the largest first, whichever layer they are in).
# "truncated": the model of "scaled" (s_k * x A[:, :k] B[:k]), read from ONE run at every rank:
#   for the grid method it serves LoRA's rank-R arm at each rank by its first k components
#   (the reference code's LoRA curve), where "scaled" reads the grid's own arm per rank.
SVD_RULES = ("svd", "svd_global")
INFERENCE_RULES = ("scaled", "truncated", "truncated_p", *SVD_RULES)


def rank_scale(r: int, scaling: str, alpha: float = 1.0) -> float:
    """s_r: alpha * 1, alpha / r or alpha / sqrt(r)."""
    check_choice("scaling", scaling, SCALINGS)
    if r <= 0:
        raise ValueError(f"rank: must be positive, got {r}")
    return alpha * {"none": 1.0, "rank": 1.0 / r, "sqrt": 1.0 / math.sqrt(r)}[scaling]


@dataclass(frozen=True)
class Ranks:
    """What a method's rules read: R, the rank set S and the rank scale s_r."""

    max_rank: int
    train_ranks: tuple[int, ...]
    scaling: str = "sqrt"
    alpha: float = 1.0

    def scale(self, r: int) -> float:
        return rank_scale(r, self.scaling, self.alpha)


class Term(NamedTuple):
    """One product of a forward: scale * x A[:k] B[:k]. A scale of None multiplies by the
    trained p[:k] instead (diag(p), entry by entry). The first `frozen` components enter
    detached: they add to the output but get no gradient from it (DyLoRA's frozen mode).
    A method's forward may return plain (k, scale) pairs; the schedule reads them as Terms."""

    rank: int
    scale: float | None
    frozen: int = 0


def _flat_p(ranks: Ranks) -> list[float]:
    """p_i = s_R for every component: LoRA at rank R (and the per-rank methods' p at R)."""
    return [ranks.scale(ranks.max_rank)] * ranks.max_rank


def matryoshka_p(ranks: Ranks) -> list[float]:
    """p_i = sum of s_r over r in S with r > i: one forward with diag(p) equals the sum over S
    of s_r x A[:, :r] B[:r]; components past max(S) get p_i = 0."""
    p = [0.0] * ranks.max_rank
    for r in ranks.train_ranks:
        for i in range(r):
            p[i] += ranks.scale(r)
    return p


def _at_max_rank(ranks: Ranks, drawn: int | None) -> list[Term]:
    return [(ranks.max_rank, ranks.scale(ranks.max_rank))]


def _at_drawn_rank(ranks: Ranks, b: int | None) -> list[Term]:
    """DyLoRA's forward: the first b components with s_b (at R outside training)."""
    return [(b or ranks.max_rank, ranks.scale(b or ranks.max_rank))]


def _mean(values: tuple[int, ...]) -> float:
    return sum(values) / len(values)


def _expected_draw(ranks: Ranks) -> list[float]:
    """A step of a method drawing b uniformly from S costs as one at the mean of S."""
    return [_mean(ranks.train_ranks)]


def previous_rank(ranks: Ranks, b: int) -> int:
    """The largest rank of S below b (0 below the smallest): dylora_frozen trains the
    components from there to b - 1 and keeps the ones below fixed."""
    return max((r for r in ranks.train_ranks if r < b), default=0)


def _at_drawn_rank_frozen_below(ranks: Ranks, b: int | None) -> list[Term]:
    """DyLoRA's forward with the components below the previous rank of S detached."""
    if b is None:
        return _at_drawn_rank(ranks, b)
    return [Term(b, ranks.scale(b), frozen=previous_rank(ranks, b))]


def _below_top(ranks: Ranks) -> tuple[int, ...]:
    """S without its largest rank: what nested_sampled draws from."""
    return ranks.train_ranks[:-1]


def _top_and_drawn(ranks: Ranks, b: int | None) -> list[tuple[int | None, float]]:
    """nested_sampled's loss: at max(S), plus at this step's draw when there is one."""
    return [(max(ranks.train_ranks), 1.0), *([(b, 1.0)] if b is not None else [])]


def _top_and_expected_draw(ranks: Ranks) -> list[float]:
    below = _below_top(ranks)
    return [max(ranks.train_ranks), *([_mean(below)] if below else [])]


@dataclass(frozen=True)
class Method:
    """A training method: a P (or a draw of it) and a loss over forwards of the one layer.

    p: the fixed diag(p) it trains with (kept by the truncated_p rule).
    forward: the products of one training forward, given this step's drawn rank (None when the
        method draws none, or outside training).
    loss_ranks: (rank, weight) of each forward whose losses a micro-batch sums; rank None is the
        `forward` above, a rank k a forward served at k with s_k.
    cost_ranks: the adapter rank of each forward and backward a step runs, for the FLOP count.
    draws_rank: draws a rank each optimizer step (or each micro-batch: the spec's
        adapters.rank_draw), uniformly and seeded, from `draw_from` (no draw, drawn None,
        when that is empty).
    per_rank_scale: trains each rank k with s_k itself, so truncated_p serves it as scaled.
    rules: the inference rules that give it different models (a trial scores each).
    served: the names a study serves it under (spec `methods`) -> their inference rule; every
        method is also served under the svd rules, as `<name>_svd` and `<name>_svd_global`.
    grid: one run per rank in S, each a LoRA at that rank (the grid), not one run at R. Under
        a rule other than "scaled" it is served as one run: its rank-R arm at every rank.
    """

    name: str
    summary: str
    forward: Callable[[Ranks, int | None], list[Term]]
    served: dict[str, str]
    p: Callable[[Ranks], list[float]] = _flat_p
    loss_ranks: Callable[[Ranks, int | None], list[tuple[int | None, float]]] = (
        lambda ranks, drawn: [(None, 1.0)]
    )
    cost_ranks: Callable[[Ranks], list[float]] = lambda ranks: [ranks.max_rank]
    draws_rank: bool = False
    draw_from: Callable[[Ranks], tuple[int, ...]] = lambda ranks: ranks.train_ranks
    per_rank_scale: bool = False
    rules: tuple[str, ...] = ("scaled",)
    grid: bool = False

    def forwards_per_step(self, ranks: Ranks) -> int:
        return len(self.cost_ranks(ranks))


REGISTRY: dict[str, Method] = {}
# What a study can serve (spec `methods`): each method under each of its served names.
SERVED: dict[str, tuple[Method, str]] = {}


def register(m: Method) -> Method:
    """Add a method to the registry, and its served names to what a study can serve: its
    own, then each under the svd rules (LoRA's as lora_svd: its rank-R arm alone)."""
    served_as = {**m.served, **{f"{m.name}_{rule}": rule for rule in SVD_RULES}}
    if m.name in REGISTRY or served_as.keys() & SERVED.keys():
        raise ValueError(f"method: {m.name!r} or one of its served names is registered already")
    m = replace(m, served=served_as, rules=(*m.rules, *SVD_RULES))
    REGISTRY[m.name] = m
    SERVED.update({name: (m, rule) for name, rule in m.served.items()})
    return m


for _method in (
    Method(
        "lora",
        "LoRA at a fixed rank r: one run per rank in S (the grid)",
        forward=_at_max_rank,
        # lora_truncated: the rank-R run cut to its first k components with s_k, the
        # reference code's LoRA baseline (one run, chosen by its validation AURAC)
        served={"lora_grid": "scaled", "lora_truncated": "truncated"},
        rules=("scaled", "truncated"),
        grid=True,
    ),
    Method(
        "dylora",
        "DyLoRA: each step draws b from S and trains the first b components with s_b",
        forward=_at_drawn_rank,
        served={"dylora": "scaled"},
        cost_ranks=_expected_draw,
        draws_rank=True,
        per_rank_scale=True,
    ),
    Method(
        "matryoshka",
        "MatryoshkaLoRA: the fixed diag(p) of the nested sum over S, one forward",
        p=matryoshka_p,
        forward=lambda ranks, drawn: [(max(ranks.train_ranks), None)],
        served={"matryoshka": "scaled", "matryoshka_truncated_p": "truncated_p"},
        cost_ranks=lambda ranks: [max(ranks.train_ranks)],
        rules=("scaled", "truncated_p"),
    ),
    Method(
        "matryoshka_binary",
        "the reference code's explicit sum of masked sub-adapters over S, divided by |S|",
        p=lambda ranks: [x / len(ranks.train_ranks) for x in matryoshka_p(ranks)],
        forward=lambda ranks, drawn: [
            (r, ranks.scale(r) / len(ranks.train_ranks)) for r in ranks.train_ranks
        ],
        served={
            "matryoshka_binary": "scaled",
            "matryoshka_binary_truncated_p": "truncated_p",
        },
        cost_ranks=lambda ranks: [sum(ranks.train_ranks)],
        rules=("scaled", "truncated_p"),
    ),
    Method(
        "nested_multiloss",
        "the nested objective taken literally: the sum over r in S of the loss at rank r",
        forward=_at_max_rank,
        served={"nested_multiloss": "scaled"},
        loss_ranks=lambda ranks, drawn: [(r, 1.0) for r in ranks.train_ranks],
        cost_ranks=lambda ranks: list(ranks.train_ranks),
        per_rank_scale=True,
    ),
    Method(
        "nested_sampled",
        "the nested loss at max(S) plus at one rank drawn each step from the rest of S",
        forward=_at_max_rank,
        served={"nested_sampled": "scaled"},
        loss_ranks=_top_and_drawn,
        cost_ranks=_top_and_expected_draw,
        draws_rank=True,
        draw_from=_below_top,
        per_rank_scale=True,
    ),
    Method(
        "dylora_frozen",
        "DyLoRA's frozen mode: a step at b trains only the components from S's previous rank",
        forward=_at_drawn_rank_frozen_below,
        served={"dylora_frozen": "scaled"},
        # the frozen components still run forward and carry the activation gradient: as DyLoRA
        cost_ranks=_expected_draw,
        draws_rank=True,
        per_rank_scale=True,
    ),
):
    register(_method)

METHODS = tuple(REGISTRY)  # the built-in methods, in the order reports list them
# What a study serves when its spec names no methods: the methods it has always compared.
# A method added later is served when a spec asks for it, so that adding one does not
# change (and lengthen) every default study.
DEFAULT = (
    "lora_grid",
    "dylora",
    "matryoshka",
    "matryoshka_truncated_p",
    "matryoshka_binary",
    "matryoshka_binary_truncated_p",
    "nested_multiloss",
)


def method(name: str) -> Method:
    return REGISTRY[check_choice("method", name, tuple(REGISTRY))]


def served(name: str) -> tuple[Method, str]:
    """The method a served name trains, and the inference rule it is served with."""
    check_choice("method", name, tuple(SERVED))
    return SERVED[name]


def per_rank_runs(kind: Method, rule: str) -> bool:
    """Whether a method served under `rule` is one run per rank (the LoRA grid), not one run
    served at every rank."""
    return kind.grid and rule == "scaled"


def one_run_curve(kind: Method, rule: str) -> bool:
    """Whether one trial of the method, served under `rule`, has a curve over ranks (chosen
    by its validation AURAC) rather than a score at its own rank (a grid arm)."""
    return not per_rank_runs(kind, rule)
