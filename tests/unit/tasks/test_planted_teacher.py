"""The planted teacher in modules of its own (task.teacher_targets): by default the adapters'
modules, unchanged; elsewhere (the MLP) only there, with no reference curve, and checked
against the model before any compute."""

import pytest
import torch

from rankstudy.core.arms import parse_arm
from rankstudy.core.spec import PlantedTaskSpec, SpecError, parse_spec
from rankstudy.model import build
from rankstudy.model.tiny import tiny_model
from rankstudy.study.model_fit import check_fits_model
from rankstudy.tasks import planted
from rankstudy.tasks.planted import find_scale, logits_of, plant_deltas, teacher_model

MLP = ["gate_proj", "up_proj", "down_proj"]
ADAPTED = ["q_proj", "v_proj"]
INPUTS = torch.randint(0, 256, (64, 16), generator=torch.Generator().manual_seed(0))
SMALL = PlantedTaskSpec(planted_rank=8, seq_len=8, train_size=16, validation_size=64, test_size=32)


def task(teacher_targets=None, targets=ADAPTED, ranks=(1, 8)) -> planted.PlantedTask:
    spec = SMALL.model_copy(update={"teacher_targets": teacher_targets})
    return planted.PlantedTask(tiny_model("llama"), spec, targets, ranks)


def test_the_default_teacher_is_the_adapters_one():
    """teacher_targets None: the deltas of the adapted modules, the same teacher as naming
    them, bit for bit."""
    default, named = task(), task(ADAPTED)
    base = tiny_model("llama")
    deltas = plant_deltas(base, ADAPTED, rank=8, seed=0)
    assert [d.module for d in deltas] == [
        n for n, _ in base.named_modules() if n.endswith((".q_proj", ".v_proj"))
    ]
    by_hand = teacher_model(base, deltas, default.scale)
    for split, inputs in default.inputs.items():
        assert torch.equal(default.teacher[split], logits_of(by_hand, inputs))
        assert torch.equal(default.teacher[split], named.teacher[split])
    assert default.reference_curve([1, 8]) is not None


def test_an_mlp_teacher_changes_the_mlp_alone():
    base = tiny_model("llama")
    deltas = plant_deltas(base, MLP, rank=8, seed=0)
    assert len(deltas) == 6 and all(".mlp." in d.module for d in deltas)
    teacher = teacher_model(base, deltas, 1.0).state_dict()
    for name, weight in base.state_dict().items():
        assert torch.equal(teacher[name], weight) == (".mlp." not in name), name


def test_the_task_plants_in_its_teacher_targets_and_has_no_reference():
    """Students on q, v cannot express a rank-k truncation of an MLP delta: no reference
    curve, and none computed."""
    mlp = task(MLP)
    base = tiny_model("llama")
    by_hand = teacher_model(base, plant_deltas(base, MLP, rank=8, seed=0), mlp.scale)
    assert torch.equal(mlp.teacher["test"], logits_of(by_hand, mlp.inputs["test"]))
    assert mlp.shift == pytest.approx(0.5, abs=0.05)
    assert mlp.reference_curve([1, 8]) is None and mlp.reference == {}
    # a teacher inside the adapted modules keeps its reference
    assert task(["q_proj"]).reference_curve([1, 8]) is not None


@pytest.mark.parametrize("shift", [0.25, 0.5])
@pytest.mark.parametrize("teacher", [MLP, ["o_proj", "down_proj"]], ids=["mlp", "mlp-teacher"])
def test_the_shift_is_reached_with_the_teacher_off_the_adapters(teacher, shift):
    """The model of planted-cpu.yaml (2-layer Llama, hidden 64, MLP 128, vocab 256), the
    teacher on the MLP, or as planted-mlp-teacher.yaml plants it."""
    base = tiny_model("llama", hidden=64, layers=2, heads=4, intermediate=128, vocab=256)
    deltas = plant_deltas(base, teacher, rank=32, seed=0)
    _, got = find_scale(base, deltas, INPUTS, shift)
    assert got == pytest.approx(shift, abs=0.03)


def test_a_teacher_target_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match="^task.teacher_targets: 'mlp_proj' matches no linear"):
        task(["gate_proj", "mlp_proj"])
    with pytest.raises(SpecError, match="teacher_targets"):
        parse_spec(spec_dict(teacher_targets=[]))


# hidden 32, 4 heads of 8, 2 key/value heads: q_proj 32x32, v_proj 32x16, MLP 32x64
def spec_dict(**task) -> dict:
    return {
        "name": "teacher",
        "model": {"tiny": {"hidden": 32, "layers": 1, "heads": 4, "intermediate": 64}},
        "task": {"kind": "planted", "planted_rank": 4, "seq_len": 8, "train_size": 16} | task,
        "adapters": {"max_rank": 8, "target_modules": ADAPTED},
        "training": {"steps": 2},
    }


def test_the_model_check_takes_the_teachers_matrices():
    check_fits_model(parse_spec(spec_dict(teacher_targets=MLP)))
    # rank 32 fits the MLP's 32x64 matrices, not v_proj's 16 columns: the teacher's decide
    check_fits_model(parse_spec(spec_dict(teacher_targets=MLP, planted_rank=32)))
    with pytest.raises(SpecError) as e:
        check_fits_model(parse_spec(spec_dict(teacher_targets=MLP, planted_rank=48)))
    assert str(e.value) == (
        "task.planted_rank: 48 cannot be planted in model.tiny: the smallest teacher matrix "
        "(model.layers.0.mlp.down_proj) has 32 rows or columns"
    )
    with pytest.raises(SpecError, match="^task.planted_rank: 32 .* smallest adapted matrix"):
        check_fits_model(parse_spec(spec_dict(planted_rank=32)))
    with pytest.raises(SpecError, match="^task.teacher_targets: 'mlp' matches no linear module"):
        check_fits_model(parse_spec(spec_dict(teacher_targets=["up_proj", "mlp"])))


def test_each_teacher_has_its_own_calibration_cache(tmp_path, monkeypatch):
    caches = []

    def recorded(*args, cache=None, **kwargs):
        caches.append(cache)

    monkeypatch.setattr(planted, "PlantedTask", recorded)
    monkeypatch.setattr(build, "_PLANTED", {})
    for teacher in (None, MLP, ["down_proj"]):
        spec = parse_spec(spec_dict(teacher_targets=teacher))
        build.build_task(spec, None, None, parse_arm("lora_r1", spec), 0, str(tmp_path))
    assert len(set(caches)) == 3
