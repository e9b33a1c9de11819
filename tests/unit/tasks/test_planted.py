"""The planted task's teacher, shift search, loss and score."""

import pytest
import torch

from rankstudy.model.tiny import tiny_model
from rankstudy.tasks.planted import (
    agreement,
    find_scale,
    logits_of,
    plant_deltas,
    shift_of,
    soft_cross_entropy,
    teacher_model,
)

INPUTS = torch.randint(0, 256, (64, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def planted():
    base = tiny_model("llama")
    return base, plant_deltas(base, ["q_proj", "v_proj"], rank=8, seed=0)


def test_deltas_have_the_planted_rank_and_decaying_spectrum(planted):
    _, deltas = planted
    assert len(deltas) == 4
    for d in deltas:
        sv = torch.linalg.svdvals(d.dense(1.0))
        assert torch.linalg.matrix_rank(d.dense(1.0)).item() == 8
        torch.testing.assert_close(sv[:8], d.sigma, rtol=1e-4, atol=1e-5)
        assert torch.all(d.sigma[1:] < d.sigma[:-1])
        # the rank-k truncation keeps exactly the top-k singular values
        torch.testing.assert_close(
            torch.linalg.svdvals(d.dense(1.0, 3))[:3], d.sigma[:3], rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("shift", [0.1, 0.5])
def test_scale_search_reaches_the_asked_shift(planted, shift):
    base, deltas = planted
    scale, got = find_scale(base, deltas, INPUTS, shift)
    assert got == pytest.approx(shift, abs=0.03)
    teacher = teacher_model(base, deltas, scale)
    assert shift_of(logits_of(base, INPUTS), logits_of(teacher, INPUTS)) == got


def test_teacher_leaves_base_untouched_and_full_reference_is_the_teacher(planted):
    base, deltas = planted
    before = {n: p.clone() for n, p in base.state_dict().items()}
    teacher = teacher_model(base, deltas, 0.5)
    assert all(torch.equal(before[n], p) for n, p in base.state_dict().items())
    full = teacher_model(base, deltas, 0.5, k=8)
    assert agreement(logits_of(full, INPUTS), logits_of(teacher, INPUTS)) == 1.0


def test_gpt2_conv1d_deltas_are_planted_in_the_right_orientation():
    base = tiny_model("gpt2")
    deltas = plant_deltas(base, ["c_attn"], rank=4)
    teacher = teacher_model(base, deltas, 1.0)
    name = deltas[0].module
    diff = teacher.get_submodule(name).weight - base.get_submodule(name).weight
    torch.testing.assert_close(diff.T, deltas[0].dense(1.0))


def test_soft_cross_entropy_is_smallest_at_the_teacher():
    teacher = torch.randn(4, 5, 32)
    other = torch.randn(4, 5, 32)
    assert soft_cross_entropy(teacher, teacher) < soft_cross_entropy(other, teacher)
    assert agreement(teacher, teacher) == 1.0


def test_bad_shift_and_targets(planted):
    base, deltas = planted
    with pytest.raises(ValueError, match="^shift:"):
        find_scale(base, deltas, INPUTS, 1.0)
    with pytest.raises(ValueError, match="^targets:"):
        plant_deltas(base, ["qkv"], rank=4)


def test_calibration_cache_gives_the_same_task_without_searching_again(tmp_path, monkeypatch):
    from rankstudy.core.spec import PlantedTaskSpec
    from rankstudy.tasks import planted

    spec = PlantedTaskSpec(
        planted_rank=4, seq_len=8, train_size=16, validation_size=32, test_size=32
    )
    cache = tmp_path / "planted.json"
    first = planted.PlantedTask(tiny_model("llama"), spec, ["q_proj"], [1, 4], cache=cache)
    assert cache.exists()

    def no_search(*args, **kwargs):
        raise AssertionError("the cached scale should be used")

    monkeypatch.setattr(planted, "find_scale", no_search)
    second = planted.PlantedTask(tiny_model("llama"), spec, ["q_proj"], [1, 2, 4], cache=cache)
    assert second.scale == first.scale and second.base_score == first.base_score
    assert second.reference[1] == first.reference[1] and 2 in second.reference
    assert all(torch.equal(second.teacher[s], first.teacher[s]) for s in first.teacher)
