"""The method registry: each method declared once, and everything else reading it."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import TARGETS
from rankstudy import methods
from rankstudy.adapters import attach_adapters, get_schedule, set_rank
from rankstudy.arms import method_arms, parse_arm
from rankstudy.cost import ModelShape, train_flops
from rankstudy.models import tiny_model
from rankstudy.spec import METHODS as SPEC_METHODS
from rankstudy.spec import parse_spec
from rankstudy.trial import method_loss
from studies import ROOT, TINY

S = (1, 2, 4, 8)
RANKS = methods.Ranks(8, S, "sqrt", 1.0)


def test_every_served_name_is_a_spec_method_and_back():
    assert tuple(SPEC_METHODS) == tuple(methods.SERVED)
    for name, (kind, rule) in methods.SERVED.items():
        assert rule in kind.rules or rule == "scaled", name


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
    ],
)
def test_cost_ranks_and_forwards_per_step_follow_the_rank_set(name, per_step):
    kind = methods.method(name)
    assert kind.cost_ranks(RANKS) == per_step
    assert kind.forwards_per_step(RANKS) == len(per_step)
    # nested_multiloss runs |S| forwards whatever S is (no hard-coded count anywhere)
    three = methods.Ranks(8, (2, 4, 8))
    assert methods.method("nested_multiloss").forwards_per_step(three) == 3


def test_train_flops_sums_a_forward_and_backward_per_cost_rank():
    shape = ModelShape(matmul_params=1000, layers=2, attn_dim=16, adapter_width=10)
    one = {r: train_flops(shape, 100, 8, "lora", r) for r in S}
    assert train_flops(shape, 100, 8, "nested_multiloss", 8, S) == pytest.approx(sum(one.values()))


def test_nested_multiloss_loss_is_the_explicit_sum_of_per_rank_losses(tokens):
    """method_loss, against the sum over S of the loss at each rank computed one by one."""
    spec = parse_spec(TINY, ["adapters.max_rank=8", "adapters.train_ranks=[1,2,4,8]"])
    arm = parse_arm("nested_multiloss", spec)
    model = tiny_model("llama", seed=0, hidden=64, layers=2, vocab=256)
    attach_adapters(model, "nested_multiloss", 8, S, target_modules=TARGETS["llama"], seed=0)
    for layer in model.modules():  # B non-zero, so that every rank's model differs
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B, std=0.1, generator=torch.Generator().manual_seed(2))

    class LM:
        def loss(self, m, batch):
            return m(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    batch = {"input_ids": tokens}
    explicit = []
    for r in S:
        set_rank(model, r)
        explicit.append(LM().loss(model, batch).item())
    set_rank(model, None)
    assert len(set(explicit)) == len(S)
    assert method_loss(model, LM(), batch, arm).item() == pytest.approx(sum(explicit), rel=1e-6)
    assert get_schedule(model).rank is None  # back to the method's own training forward


def test_the_grid_is_one_lora_arm_per_rank_of_the_set():
    spec = parse_spec(TINY)
    assert method_arms("lora_grid", spec) == ["lora_r1", "lora_r2", "lora_r4", "lora_r8"]
    assert method_arms("matryoshka_truncated_p", spec) == ["matryoshka"]


def test_a_method_added_to_the_registry_alone_runs_in_a_trial(tmp_path):
    """One new entry is all a method needs: the spec serves it, a trial trains and scores it,
    and the cost model counts it (a fresh process, so that every module reads the entry)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from rankstudy import methods
        half = methods.Method(
            "half_lora", "LoRA at R with half its scale",
            forward=lambda ranks, drawn: [(ranks.max_rank, ranks.scale(ranks.max_rank) / 2)],
            served={{"half_lora": "scaled"}},
        )
        methods.register(half)
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from studies import TINY
        from rankstudy.trial import run_trial
        spec = dict(TINY, methods=["half_lora"])
        config = {{"spec": spec, "arm": "half_lora", "out_dir": {str(tmp_path)!r},
                   "overrides": ["training.steps=3", "training.checkpoint_every=0"]}}
        result = run_trial(config)
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
