"""The method registry: each method declared once, and everything else reading it."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from conftest import TARGETS
from rankstudy.adapters import (
    RankSchedule,
    attach_adapters,
    export_peft,
    get_schedule,
    set_rank,
)
from rankstudy.core import methods
from rankstudy.core.arms import method_arms, parse_arm
from rankstudy.core.cost import ModelShape, train_flops
from rankstudy.core.spec import SpecError, parse_spec
from rankstudy.model.tiny import tiny_model
from rankstudy.trial.lifecycle import method_loss
from studies import ROOT, TINY

S = (1, 2, 4, 8)
RANKS = methods.Ranks(8, S, "sqrt", 1.0)


def served_by_hand() -> dict[str, tuple[str, list[str]]]:
    """Every name a spec may serve, written out from the README: (its rule, the arms a spec of
    S = {1, 2, 4, 8} trains for it). Each method is also served under the two svd rules by
    its rank-R arm (LoRA's as lora_svd)."""
    own = {
        "lora_grid": ("scaled", ["lora_r1", "lora_r2", "lora_r4", "lora_r8"]),
        "lora_truncated": ("truncated", ["lora_r8"]),
        "dylora": ("scaled", ["dylora"]),
        "matryoshka": ("scaled", ["matryoshka"]),
        "matryoshka_truncated_p": ("truncated_p", ["matryoshka"]),
        "matryoshka_binary": ("scaled", ["matryoshka_binary"]),
        "matryoshka_binary_truncated_p": ("truncated_p", ["matryoshka_binary"]),
        "nested_multiloss": ("scaled", ["nested_multiloss"]),
        "nested_sampled": ("scaled", ["nested_sampled"]),
        "dylora_frozen": ("scaled", ["dylora_frozen"]),
    }
    trained = ["lora", "dylora", "matryoshka", "matryoshka_binary", "nested_multiloss"]
    trained += ["nested_sampled", "dylora_frozen"]
    for name in trained:
        arms = ["lora_r8"] if name == "lora" else [name]
        own |= {f"{name}_{rule}": (rule, arms) for rule in ("svd", "svd_global")}
    return own


def test_every_served_name_is_a_spec_method_and_back():
    """A spec may name every served method (the README's list, written out), each with the
    arms it trains and the rule it serves, and nothing else."""
    expected = served_by_hand()
    assert set(methods.SERVED) == set(expected)
    for name, (rule, arms) in expected.items():
        assert methods.SERVED[name][1] == rule, name
        assert method_arms(name, parse_spec(TINY | {"methods": [name]})) == arms, name
    for wrong in ("matryoshka_by_hand", "lora", "dylora_truncated_p", "lora_grid_svd"):
        with pytest.raises(SpecError, match="methods"):
            parse_spec(TINY | {"methods": [wrong]})


@pytest.mark.parametrize(
    "name, p",
    [
        ("lora", [1 / math.sqrt(8)] * 8),
        ("dylora", [1 / math.sqrt(8)] * 8),
        ("nested_multiloss", [1 / math.sqrt(8)] * 8),
        # p_i = sum of s_r over r in S with r > i, written out for S = {1, 2, 4, 8}
        (
            "matryoshka",
            [1 + 2**-0.5 + 0.5 + 8**-0.5]
            + [2**-0.5 + 0.5 + 8**-0.5]
            + [0.5 + 8**-0.5] * 2
            + [8**-0.5] * 4,
        ),
    ],
)
def test_trained_p_by_hand(name, p):
    assert methods.method(name).p(RANKS) == pytest.approx(p, rel=1e-12)


def test_binary_p_is_matryoshka_p_over_set_size():
    got = methods.method("matryoshka_binary").p(RANKS)
    assert got == pytest.approx([x / 4 for x in methods.matryoshka_p(RANKS)], rel=1e-15)


@pytest.mark.parametrize(
    "name, per_step",
    [
        ("lora", [8]),
        ("dylora", [15 / 4]),
        ("matryoshka", [8]),
        ("matryoshka_binary", [15]),
        ("nested_multiloss", [1, 2, 4, 8]),
        ("nested_sampled", [8, 7 / 3]),  # R, and the mean of the draw from {1, 2, 4}
        ("dylora_frozen", [15 / 4]),  # frozen components still run forward: as DyLoRA
    ],
)
def test_cost_ranks_and_forwards_per_step_follow_the_rank_set(name, per_step):
    kind = methods.method(name)
    assert kind.cost_ranks(RANKS) == per_step
    assert kind.forwards_per_step(RANKS) == len(per_step)
    # nested_multiloss runs |S| forwards whatever S is (no hard-coded count anywhere)
    three = methods.Ranks(8, (2, 4, 8))
    assert methods.method("nested_multiloss").forwards_per_step(three) == 3


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_forwards_per_step_is_what_a_micro_batch_runs(name, tokens):
    """The model's forwards one micro-batch's loss really runs (method_loss after the step's
    draw, as a trial runs it), counted by a hook: the registry's forwards_per_step."""
    model, arm = adapted_model(name)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    for _ in range(5):  # several draws: a sampled method runs the same count whatever b is
        calls.clear()
        get_schedule(model).resample()
        method_loss(model, LM(), {"input_ids": tokens}, arm)
        assert len(calls) == methods.method(name).forwards_per_step(RANKS)


def test_train_flops_sums_a_forward_and_backward_per_cost_rank():
    shape = ModelShape(matmul_params=1000, layers=2, attn_dim=16, adapter_width=10)
    one = {r: train_flops(shape, 100, 8, "lora", r) for r in S}
    assert train_flops(shape, 100, 8, "nested_multiloss", 8, S) == pytest.approx(sum(one.values()))


class LM:
    def loss(self, m, batch):
        return m(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


def adapted_model(name: str):
    """A tiny llama with `name`'s adapters (S = {1, 2, 4, 8}) and its arm (LoRA's at rank 8);
    B non-zero, so that every rank's model differs."""
    spec = parse_spec(TINY, ["adapters.max_rank=8", "adapters.train_ranks=[1,2,4,8]"])
    model = tiny_model("llama", seed=0, hidden=64, layers=2, vocab=256)
    attach_adapters(model, name, 8, S, target_modules=TARGETS["llama"], seed=0)
    for layer in model.modules():
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B, std=0.1, generator=torch.Generator().manual_seed(2))
    return model, parse_arm("lora_r8" if name == "lora" else name, spec)


def loss_at(model, batch, r: int) -> float:
    set_rank(model, r)
    loss = LM().loss(model, batch).item()
    set_rank(model, None)
    return loss


def test_nested_multiloss_loss_is_the_explicit_sum_of_per_rank_losses(tokens):
    """method_loss, against the sum over S of the loss at each rank computed one by one."""
    model, arm = adapted_model("nested_multiloss")
    batch = {"input_ids": tokens}
    explicit = [loss_at(model, batch, r) for r in S]
    assert len(set(explicit)) == len(S)
    assert method_loss(model, LM(), batch, arm).item() == pytest.approx(sum(explicit), rel=1e-6)
    assert get_schedule(model).rank is None  # back to the method's own training forward


def test_nested_sampled_loss_is_the_loss_at_R_plus_the_loss_at_the_drawn_rank(tokens):
    """method_loss after each draw, against loss(8) + loss(b) computed one by one; every
    b in {1, 2, 4} comes up, and each gives a different total."""
    model, arm = adapted_model("nested_sampled")
    schedule, batch = get_schedule(model), {"input_ids": tokens}
    at = {r: loss_at(model, batch, r) for r in S}
    assert len(set(at.values())) == len(S)
    seen = set()
    for _ in range(20):
        b = schedule.resample()
        seen.add(b)
        got = method_loss(model, LM(), batch, arm).item()
        assert got == pytest.approx(at[8] + at[b], rel=1e-6), b
        assert schedule.rank is None and schedule.sampled_rank == b
    assert seen == {1, 2, 4}


def test_nested_sampled_with_only_R_runs_one_forward(tokens):
    """S = {R}: nothing is left to draw, so the loss is the loss at R alone."""
    spec = parse_spec(TINY, ["adapters.max_rank=4", "adapters.train_ranks=[4]"])
    model = tiny_model("llama", seed=0, hidden=64, layers=2, vocab=256)
    attach_adapters(model, "nested_sampled", 4, (4,), target_modules=TARGETS["llama"], seed=0)
    assert get_schedule(model).resample() is None
    batch = {"input_ids": tokens}
    alone = loss_at(model, batch, 4)
    got = method_loss(model, LM(), batch, parse_arm("nested_sampled", spec)).item()
    assert got == pytest.approx(alone, rel=1e-6)
    assert methods.method("nested_sampled").cost_ranks(methods.Ranks(4, (4,))) == [4]


def draws(schedule: RankSchedule, n: int) -> list:
    return [schedule.resample() for _ in range(n)]


@pytest.mark.parametrize(
    "name, pool", [("nested_sampled", {1, 2, 4}), ("dylora_frozen", {1, 2, 4, 8})]
)
def test_draws_are_uniform_over_the_pool_seeded_and_resumable(name, pool):
    """The draws come from S without R (nested_sampled) or S (dylora_frozen), about equally
    often; the seed fixes them; a schedule given a saved generator state (what a checkpoint
    keeps) continues the sequence exactly."""
    schedule = RankSchedule(name, 8, S, seed=3)
    sequence = draws(schedule, 1200)
    assert set(sequence) == pool
    for r in pool:  # expected 1200 / |pool| each; 5 sigma is well under 25 %
        assert abs(sequence.count(r) / 1200 - 1 / len(pool)) < 0.25 / len(pool)
    assert draws(RankSchedule(name, 8, S, seed=3), 1200) == sequence
    assert draws(RankSchedule(name, 8, S, seed=4), 50) != sequence[:50]
    first = RankSchedule(name, 8, S, seed=3)
    head = draws(first, 500)
    resumed = RankSchedule(name, 8, S, seed=99)
    resumed.set_rng_state(first.rng_state())
    assert head + draws(resumed, 700) == sequence


def test_dylora_frozen_freezes_below_the_previous_rank_of_the_set():
    """lo for each b, written out: the largest rank of S below b, 0 for the smallest."""
    ranks = methods.Ranks(8, (1, 2, 4, 8))
    assert [methods.previous_rank(ranks, b) for b in (1, 2, 4, 8)] == [0, 1, 2, 4]
    forward = methods.method("dylora_frozen").forward
    assert forward(ranks, 4) == [(4, 0.5, 2)]
    assert forward(methods.Ranks(8, (2, 8)), 8) == [(8, pytest.approx(8**-0.5), 2)]


def test_train_flops_of_the_new_methods_by_hand():
    """FLOPs per token: base 4 N (forward + activation gradient), adapter 6 r W, attention
    3 * 4 L d seq; nested_sampled pays that at r = 8 and at r = 7/3, dylora_frozen at 15/4."""
    shape = ModelShape(matmul_params=1000, layers=2, attn_dim=16, adapter_width=10)
    attention = 3 * 4 * 2 * 16 * 8  # 3072

    def per_token(r):
        return 4 * 1000 + 6 * r * 10 + attention

    sampled = train_flops(shape, 100, 8, "nested_sampled", 8, S)
    assert sampled == pytest.approx(100 * (per_token(8) + per_token(7 / 3)))
    assert sampled == pytest.approx(100 * (7552 + 7212))
    frozen = train_flops(shape, 100, 8, "dylora_frozen", 8, S)
    assert frozen == pytest.approx(100 * per_token(15 / 4)) == pytest.approx(100 * 7297)
    assert frozen == pytest.approx(train_flops(shape, 100, 8, "dylora", 8, S))


def test_new_methods_are_served_but_not_in_the_default_study():
    """A spec may ask for nested_sampled and dylora_frozen, each its own arm at R; a spec
    that names no methods still gets the seven methods it always had, in their order."""
    seven = [  # what a spec without methods runs, written out
        "lora_grid",
        "dylora",
        "matryoshka",
        "matryoshka_truncated_p",
        "matryoshka_binary",
        "matryoshka_binary_truncated_p",
        "nested_multiloss",
    ]
    assert list(methods.DEFAULT) == seven
    assert parse_spec({k: v for k, v in TINY.items() if k != "methods"}).methods == seven
    spec = parse_spec(TINY | {"methods": ["lora_grid", "nested_sampled", "dylora_frozen"]})
    for name in ("nested_sampled", "dylora_frozen"):
        assert methods.served(name) == (methods.method(name), "scaled")
        assert method_arms(name, spec) == [name]
        arm = parse_arm(name, spec)
        assert (arm.max_rank, arm.train_ranks, arm.nested) == (8, S, True)


def test_the_grid_is_one_lora_arm_per_rank_of_the_set():
    spec = parse_spec(TINY)
    assert method_arms("lora_grid", spec) == ["lora_r1", "lora_r2", "lora_r4", "lora_r8"]
    assert method_arms("matryoshka_truncated_p", spec) == ["matryoshka"]


def test_lora_truncated_is_the_rank_R_arm_scored_at_every_rank_under_s_k():
    """The reference code's LoRA curve: one run (lora_r8), its first k components with s_k."""
    spec = parse_spec(TINY | {"methods": ["lora_grid", "lora_truncated"]})
    assert method_arms("lora_truncated", spec) == ["lora_r8"]
    r8, r4 = parse_arm("lora_r8", spec), parse_arm("lora_r4", spec)
    assert r8.rules_scored(["scaled", "truncated"]) == [("scaled", (8,)), ("truncated", S)]
    assert r4.rules_scored(["scaled"]) == [("scaled", (4,))]
    assert not methods.per_rank_runs(*methods.served("lora_truncated"))
    # served at k it is the paper's rule's model: s_k x A[:k] B[:k], not the run's s_R
    schedule = RankSchedule("lora", 8, (8,), "sqrt", inference_rule="truncated")
    schedule.rank = 2
    assert schedule.terms(False) == [(2, pytest.approx(2**-0.5), 0)]


def test_a_method_added_to_the_registry_alone_runs_in_a_trial(tmp_path):
    """One new entry is all a method needs: the spec serves it, a trial trains and scores it,
    and the cost model counts it (a fresh process, so that every module reads the entry)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from rankstudy.core import methods
        half = methods.Method(
            "half_lora", "LoRA at R with half its scale",
            forward=lambda ranks, drawn: [(ranks.max_rank, ranks.scale(ranks.max_rank) / 2)],
            served={{"half_lora": "scaled"}},
        )
        methods.register(half)
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from studies import TINY
        from rankstudy.trial.lifecycle import run_trial
        spec = dict(TINY, methods=["half_lora"])
        config = {{"spec": spec, "arm": "half_lora", "out_dir": {str(tmp_path)!r},
                   "overrides": ["training.steps=3", "training.checkpoint_every=0"]}}
        result = run_trial(config).wire()
        print(json.dumps([result["method"], result["cost"]["train_flops"] > 0,
                          sorted(result["scores"])]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == '["half_lora", true, ["1", "2", "4", "8"]]'


def test_an_arms_search_weight_is_its_methods_forwards_per_step():
    """The searcher orders arms by this (nested_multiloss: |S| forwards, whatever S is)."""
    spec = parse_spec(TINY, ["adapters.train_ranks=[2,4,8]"])
    assert parse_arm("nested_multiloss", spec).forwards_per_step == 3
    assert parse_arm("matryoshka", spec).forwards_per_step == 1
    assert parse_arm("lora_r4", spec).forwards_per_step == 1


@pytest.mark.parametrize("name", ["nested_sampled", "dylora_frozen"])
def test_new_methods_export_to_peft_under_the_scaled_rule(tmp_path, tokens, name):
    """PEFT, loading the rank-2 export, reproduces our logits at rank 2 with s_2; asking for
    truncated_p exports the same tensors, since both methods train each rank with s_k."""
    model, _ = adapted_model(name)
    set_rank(model, 2)
    with torch.no_grad():
        ours = model(tokens).logits
        base = tiny_model("llama", seed=0, hidden=64, layers=2, vocab=256)(tokens).logits
    assert (ours - base).abs().max() > 1e-3  # the adapter really changes the output
    export_peft(model, 2, tmp_path / "scaled", rule="scaled")
    export_peft(model, 2, tmp_path / "truncated", rule="truncated_p")
    base_model = tiny_model("llama", seed=0, hidden=64, layers=2, vocab=256)
    peft_model = PeftModel.from_pretrained(base_model, tmp_path / "scaled").eval()
    with torch.no_grad():
        theirs = peft_model(tokens).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    scaled, truncated = (
        load_file(tmp_path / d / "adapter_model.safetensors") for d in ("scaled", "truncated")
    )
    assert scaled.keys() == truncated.keys()
    assert all(torch.equal(scaled[k], truncated[k]) for k in scaled)
