"""A spec's sweep: the study points its `sweep` fields and training `budgets` expand into (each a
valid spec whose only differences are the point's own), bad budgets named, and the sweep's
summary, table and record of finished points from constructed study summaries."""

import copy
import json

import pytest

from rankstudy.core import mlflow_names as names
from rankstudy.core.spec import SpecError, parse_spec
from rankstudy.core.summaries import (
    PointEntry,
    SweepSummary,
    read_sweep_summaries,
    write_study_summary,
)
from rankstudy.study.sweep import (
    SweepPoint,
    budget_key,
    finished_folders,
    frontier_text,
    shared_tracking,
    sweep_points,
    sweep_summaries,
    sweep_table,
    write_sweep_summary,
)
from report_store import make_study_summary, make_summary
from studies import TINY


def spec_with(**fields):
    data = copy.deepcopy(TINY)
    for key, value in fields.items():
        data[key] = value
    return data


def point_specs(data):
    """Each point's label and the spec it runs (the base spec with the point's overrides)."""
    return [(p.label, parse_spec(data, p.overrides)) for p in sweep_points(parse_spec(data))]


def test_budgets_multiply_steps_and_change_nothing_else():
    data = spec_with(budgets=[0.25, 0.5, 1, 2, 4])
    points = point_specs(data)
    assert [label for label, _ in points] == [
        "budget0.25",
        "budget0.5",
        "budget1",
        "budget2",
        "budget4",
    ]
    assert [s.training.steps for _, s in points] == [15, 30, 60, 120, 240]  # TINY: 60 steps
    base = parse_spec(data).model_dump(exclude={"name", "budgets", "training"})
    for label, s in points:
        assert s.name == f"tiny-study-{label}" and s.budgets is None
        assert s.model_dump(exclude={"name", "budgets", "training"}) == base  # same search, seeds
        assert s.training.model_dump(exclude={"steps"}) == parse_spec(data).training.model_dump(
            exclude={"steps"}
        )


def test_budgets_multiply_epochs_when_the_spec_gives_epochs():
    data = spec_with(budgets=[0.5, 3])
    data["training"] = {k: v for k, v in data["training"].items() if k != "steps"} | {"epochs": 1.5}
    points = point_specs(data)
    assert [(label, s.training.epochs, s.training.steps) for label, s in points] == [
        ("budget0.5", 0.75, None),
        ("budget3", 4.5, None),
    ]


def test_steps_are_rounded_and_at_least_one():
    data = spec_with(budgets=[0.1, 0.5, 1])
    data["training"] = data["training"] | {"steps": 3}
    assert [s.training.steps for _, s in point_specs(data)] == [1, 2, 3]  # 0.3, 1.5 (even), 3


def test_budgets_cross_the_sweep_product_and_tag_each_line_of_budgets():
    data = spec_with(budgets=[0.5, 1], sweep={"task.shift": [0.1, 0.5]})
    points = sweep_points(parse_spec(data))
    assert [p.label for p in points] == [
        "shift0.1-budget0.5",
        "shift0.1-budget1",
        "shift0.5-budget0.5",
        "shift0.5-budget1",
    ]
    specs = [parse_spec(data, p.overrides) for p in points]
    assert [(s.task.shift, s.training.steps) for s in specs] == [
        (0.1, 30),
        (0.1, 60),
        (0.5, 30),
        (0.5, 60),
    ]
    shift = names.SETTING_TAG_PREFIX + "task.shift"
    assert [p.tags for p in points] == [
        {names.SWEEP_TAG: f"tiny-study-shift{s}", names.BUDGET_TAG: b, shift: str(s)}
        for s in (0.1, 0.5)
        for b in ("0.5", "1.0")
    ]


def test_a_sweep_without_budgets_and_a_plain_study():
    points = sweep_points(parse_spec(spec_with(sweep={"task.shift": [0.1, 0.5]})))
    shift = names.SETTING_TAG_PREFIX + "task.shift"
    assert [(p.label, p.budget, p.tags) for p in points] == [
        ("shift0.1", None, {names.SWEEP_TAG: "tiny-study", shift: "0.1"}),
        ("shift0.5", None, {names.SWEEP_TAG: "tiny-study", shift: "0.5"}),
    ]
    assert points[0].overrides == ["task.shift=0.1", "name=tiny-study-shift0.1"]
    assert sweep_points(parse_spec(TINY)) == [SweepPoint("")]
    assert SweepPoint("").tags == {}


def test_every_point_shares_one_store_and_experiment():
    uri = "sqlite:////tmp/out/mlflow.db"
    spec = parse_spec(spec_with(budgets=[0.5, 1]))
    assert shared_tracking(spec, uri) == [
        f"tracking.uri={uri}",
        "tracking.experiment=tiny-study",  # the base spec's name, not the point's
    ]
    named = parse_spec(spec_with(budgets=[0.5, 1], tracking={"experiment": "team"}))
    for p in sweep_points(named):
        point = parse_spec(
            spec_with(budgets=[0.5, 1]), [*p.overrides, *shared_tracking(named, uri)]
        )
        assert point.tracking.experiment == "team" and point.tracking.uri == uri


BAD_BUDGETS = [
    ({"budgets": []}, "budgets: give at least one multiple, each > 0; got []"),
    ({"budgets": [0.5, 0]}, "budgets: give at least one multiple, each > 0; got [0.5, 0.0]"),
    ({"budgets": [-1]}, "budgets: give at least one multiple, each > 0"),
    ({"budgets": [1, 1.0]}, "budgets: give each multiple once; got [1.0, 1.0]"),
    ({"budgets": ["x"]}, "budgets.0: Input should be a valid number"),
    ({"budgets": [1.0, 1.004]}, "budgets: 1.0 and 1.004 both give training.steps=60 (of 60)"),
    (
        {"budgets": [0.5, 1], "sweep": {"training.steps": [10, 20]}},
        "budgets: multiply the spec's own training budget; do not also sweep training.steps",
    ),
]


@pytest.mark.parametrize("fields,message", BAD_BUDGETS, ids=[m for _, m in BAD_BUDGETS])
def test_bad_budgets_are_named(fields, message):
    with pytest.raises(SpecError) as e:
        parse_spec(spec_with(**fields))
    assert str(e.value).startswith(message), str(e.value)


def study_summary(grid_aurac, grid_flops, missing=None):
    """A point's study summary as rankstudy.study.summary writes it (the fields a sweep reads)."""

    def method(aurac, std, flops, seconds, trials, seeds=2):
        return make_summary(
            aurac_log2=aurac,
            aurac_log2_std=std,
            scores_by_seed={str(s): [aurac] for s in range(seeds)},
            aurac_linear=aurac + 0.05,
            cost={"flops": flops, "device_seconds": seconds},
            search_trials=trials,
        )

    methods = {
        "lora_grid": method(grid_aurac, 0.004, grid_flops, 100.0, 12),
        "dylora": method(0.77, 0.01, 3.3e11, 20.0, 2),
    }
    return make_study_summary(methods=methods, missing=missing or {})


def test_sweep_summary_holds_each_finished_point_and_says_what_is_left(tmp_path):
    points = sweep_points(parse_spec(spec_with(budgets=[0.5, 1])))
    folders = [tmp_path / p.label for p in points]
    done = {str(folders[0]): study_summary(0.8, 8.4e11)}
    path = write_sweep_summary(tmp_path, sweep_summaries(points, folders, done))
    first = json.loads(path.read_text())
    assert first == {
        "sweep": "tiny-study",
        "budgets": [0.5, 1.0],
        "points": {
            "0.5": {
                "lora_grid": {
                    "aurac": 0.8,
                    "std": 0.004,
                    "aurac_linear": pytest.approx(0.85),
                    "flops": 8.4e11,
                    "device_seconds": 100.0,
                    "trials": 12,
                },
                "dylora": {
                    "aurac": 0.77,
                    "std": 0.01,
                    "aurac_linear": pytest.approx(0.82),
                    "flops": 3.3e11,
                    "device_seconds": 20.0,
                    "trials": 2,
                },
            }
        },
        "folders": {"0.5": str(folders[0]), "1.0": str(folders[1])},
        "complete": False,
    }
    assert finished_folders(tmp_path) == {str(folders[0])}  # a resume skips only this one
    done[str(folders[1])] = study_summary(0.825, 1.68e12, missing={"dylora": "arm failed"})
    write_sweep_summary(tmp_path, sweep_summaries(points, folders, done))
    whole = json.loads(path.read_text())
    assert whole["complete"] and set(whole["points"]) == {"0.5", "1.0"}
    assert whole["missing"] == {"1.0": {"dylora": "arm failed"}}
    assert finished_folders(tmp_path) == {str(f) for f in folders}
    assert finished_folders(tmp_path / "nothing") == set()


def test_sweep_table_reads_every_method_at_every_budget(tmp_path):
    points = sweep_points(parse_spec(spec_with(budgets=[0.5, 1])))
    folders = [tmp_path / p.label for p in points]
    done = {
        str(folders[0]): study_summary(0.8, 8.4e11),
        str(folders[1]): study_summary(0.825, 1.68e12),
    }
    done[str(folders[1])].methods.pop("dylora")
    table = sweep_table(sweep_summaries(points, folders, done)[0]).splitlines()
    assert table[0].startswith("sweep tiny-study: AURAC log2")
    assert table[1].split() == ["method", "x0.5", "x1.0"]
    assert table[2].split() == ["lora_grid", "0.800±0.004", "8.4e+11", "0.825±0.004", "1.7e+12"]
    assert table[3].split() == ["dylora", "0.770±0.010", "3.3e+11", "not", "scored"]


def test_a_point_of_one_seed_has_no_spread_rather_than_zero(tmp_path):
    points = sweep_points(parse_spec(spec_with(budgets=[1])))
    done = {str(tmp_path): study_summary(0.825, 1.68e12)}
    done[str(tmp_path)].methods["dylora"].scores_by_seed = {"0": [0.77]}
    summary = sweep_summaries(points, [tmp_path], done)[0]
    assert summary.points["1.0"]["dylora"].std is None
    assert summary.points["1.0"]["lora_grid"].std == 0.004
    table = sweep_table(summary).splitlines()
    assert table[2].split() == ["lora_grid", "0.825±0.004", "1.7e+12"]
    assert table[3].split() == ["dylora", "0.770±n/a", "3.3e+11"]


def test_crossed_sweeps_are_summarised_apart(tmp_path):
    points = sweep_points(parse_spec(spec_with(budgets=[0.5, 1], sweep={"task.shift": [0.1, 0.5]})))
    folders = [tmp_path / p.label for p in points]
    done = {str(f): study_summary(0.8, 1e12) for f in folders[:3]}
    write_sweep_summary(tmp_path, sweep_summaries(points, folders, done))
    body = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert [(s["sweep"], s["complete"], sorted(s["points"])) for s in body["sweeps"]] == [
        ("tiny-study-shift0.1", True, ["0.5", "1.0"]),
        ("tiny-study-shift0.5", False, ["0.5"]),
    ]
    assert finished_folders(tmp_path) == {str(f) for f in folders[:3]}


def test_frontier_text_reads_each_method_against_the_grid_by_hand():
    """The grid at x1: AURAC 0.80 for 1e12 FLOPs. DyLoRA crosses 0.79 between 2e11 (0.76) and
    8e11 (0.80): three quarters of the way in log FLOPs, 10**(log10(2e11) + 0.75 * log10(4))
    = 5.66e11 = 0.57x the grid; the grid's 1e12 lies past its last point."""

    def point(aurac, flops, seconds):
        return PointEntry(aurac=aurac, std=0.0, flops=flops, device_seconds=seconds)

    summary = SweepSummary(
        sweep="s",
        budgets=[0.5, 1.0, 4.0],
        points={
            budget_key(0.5): {"lora_grid": point(0.7, 5e11, 50), "dylora": point(0.7, 1e11, 10)},
            budget_key(1.0): {"lora_grid": point(0.8, 1e12, 100), "dylora": point(0.76, 2e11, 20)},
            budget_key(4.0): {"lora_grid": point(0.85, 4e12, 400), "dylora": point(0.8, 8e11, 80)},
        },
    )
    text = frontier_text(summary)
    assert "AURAC 0.800, 1.00e+12 FLOPs, 100 device-s; target 0.790" in text
    row = next(line for line in text.splitlines() if line.startswith("dylora"))
    assert row.split() == ["dylora", "outside", "its", "sweep", "5.66e+11", "(0.57x", "grid)", "57"]


class FinishedPoint:
    """A sweep point's study that finished before: the resume may read its folder, never run
    it."""

    def __init__(self, out_dir, name: str) -> None:
        self.out_dir, self.logged = out_dir, []
        self.spec = type("Spec", (), {"name": name})()

    def log(self, line: str) -> None:
        self.logged.append(line)

    def run(self) -> dict:
        raise AssertionError(f"{self.spec.name} finished before, yet was run again")


def test_resuming_a_finished_sweep_runs_nothing_and_keeps_its_summary(tmp_path, capsys):
    """--resume on a sweep whose every point finished: no point runs again, the exit is 0,
    and sweep_summary.json is what the uninterrupted sweep wrote, its table and frontier
    printed again."""
    from rankstudy.commands.cli import _run_points

    points = sweep_points(parse_spec(spec_with(budgets=[0.5, 1])))
    folders = [tmp_path / p.label for p in points]
    done = {
        str(folders[0]): study_summary(0.8, 8.4e11),
        str(folders[1]): study_summary(0.825, 1.68e12),
    }
    for folder in folders:
        folder.mkdir()
        write_study_summary(folder, done[str(folder)])
    path = write_sweep_summary(tmp_path, sweep_summaries(points, folders, done))
    before = path.read_text()
    studies = [
        FinishedPoint(f, f"tiny-study-{p.label}") for p, f in zip(points, folders, strict=True)
    ]
    assert _run_points(studies, (points, tmp_path), resume=True) == 0
    assert path.read_text() == before
    assert json.loads(before)["complete"] is True
    for study in studies:
        assert study.logged == [
            "finished before the resume: not run again (study_summary.json kept)"
        ]
    printed = capsys.readouterr().out
    (written,) = read_sweep_summaries(path)
    assert sweep_table(written) in printed and f"wrote {path}" in printed
    # the printed frontier, by hand: the grid at x1 (0.825, 1.68e12 FLOPs) sets the target
    # 0.815; DyLoRA's points (0.770 at 3.3e11 both times) stop below the grid's FLOPs
    frontier = printed[printed.index("frontier against lora_grid") :].splitlines()
    assert frontier[0] == (
        "frontier against lora_grid at budget x1: AURAC 0.825, 1.68e+12 FLOPs, 100 device-s; "
        "target 0.815"
    )
    assert frontier[2].split() == ["dylora", "outside", "its", "sweep", "not", "reached", "-"]
