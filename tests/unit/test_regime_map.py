"""The regime map: per point of a sweep of settings, the focus method's AURAC minus every other
method's with its paired interval, read from verdicts built from constructed per-example scores
whose differences are known in advance."""

import json

import numpy as np
import pytest

from rankstudy.core.intervals import draws_intervals, recommend, resample_curves
from rankstudy.core.spec import parse_spec
from rankstudy.core.summaries import write_study_summary
from rankstudy.core.verdict_records import Verdict
from rankstudy.study.regime_map import (
    folder_summaries,
    map_table,
    point_cells,
    sweep_cells,
    tally,
    write_regime_map,
)
from rankstudy.study.sweep import sweep_points
from report_store import make_study_summary
from studies import TINY

RANKS = [1, 2, 4]


def verdict(shifts: dict[str, float], order: list[str]) -> Verdict:
    """A verdict of methods whose every example scores `shift` above a shared base: each
    difference is exactly the difference of the shifts, on every resample."""
    base = np.random.default_rng(0).uniform(0, 0.5, (len(RANKS), 100))
    examples = {m: {0: base + shifts[m]} for m in order}
    draws = resample_curves(examples, 200, 0)
    choice = recommend(RANKS, draws, dict.fromkeys(order, 1.0))
    return Verdict(intervals=draws_intervals(RANKS, draws, 0.95), recommendation=choice)


def test_each_cell_is_the_focus_minus_the_other_whichever_order_the_pair_was_stored():
    # matryoshka stored after dylora and before lora_grid: both orders of pairs
    v = verdict(
        {"dylora": 0.1, "matryoshka": 0.3, "lora_grid": 0.3}, ["dylora", "matryoshka", "lora_grid"]
    )
    cells = {c.other: c for c in point_cells({"training.lr": 1e-3}, v)}
    assert set(cells) == {"dylora", "lora_grid"}
    assert (cells["dylora"].point, cells["dylora"].low, cells["dylora"].high) == pytest.approx(
        (0.2, 0.2, 0.2)
    )
    assert cells["dylora"].verdict == "wins" and cells["dylora"].p_better == 1.0
    assert cells["lora_grid"].point == pytest.approx(0.0, abs=1e-12)
    assert cells["lora_grid"].verdict == "tied" and cells["lora_grid"].p_better == 0.5
    assert cells["dylora"].settings == {"training.lr": 1e-3}


def test_a_point_without_a_verdict_or_the_focus_has_no_cells():
    v = verdict({"dylora": 0.1, "lora_grid": 0.3}, ["dylora", "lora_grid"])
    assert point_cells({"x": 1}, v) == []
    assert point_cells({"x": 1}, None) == []


def test_the_table_tally_and_file_of_a_sweep(tmp_path):
    wins = verdict({"dylora": 0.1, "matryoshka": 0.2}, ["dylora", "matryoshka"])
    loses = verdict({"dylora": 0.3, "matryoshka": 0.2}, ["dylora", "matryoshka"])
    points = [
        ({"training.lr": 1e-4}, make_study_summary(verdict=wins)),
        ({"training.lr": 1e-2}, make_study_summary(verdict=loses)),
    ]
    points.append(({"training.lr": 1e-3}, None))  # not finished
    cells = sweep_cells(points)
    assert [(c.settings["training.lr"], c.verdict) for c in cells] == [
        (1e-4, "wins"),
        (1e-2, "loses"),
    ]
    assert tally(cells) == {"dylora": {"wins": 1, "loses": 1, "tied": 0}}
    table = map_table(cells)
    assert "+0.100 [+0.100,+0.100]+" in table and "-0.100 [-0.100,-0.100]-" in table
    body = json.loads(write_regime_map(tmp_path, cells, 3).read_text())
    assert (body["points"], body["finished"], body["focus"]) == (3, 2, "matryoshka")
    assert [c["verdict"] for c in body["cells"]] == ["wins", "loses"]


def test_point_folders_are_read_where_finished(tmp_path):
    (tmp_path / "a").mkdir()
    write_study_summary(tmp_path / "a", make_study_summary())
    assert folder_summaries([tmp_path / "a", tmp_path / "b"]) == [make_study_summary(), None]


def test_each_sweep_point_tags_its_settings():
    spec = parse_spec(TINY | {"sweep": {"training.lr": [1e-3, 1e-2], "adapters.a_init": ["peft"]}})
    points = sweep_points(spec)
    assert [p.settings for p in points] == [
        {"training.lr": 1e-3, "adapters.a_init": "peft"},
        {"training.lr": 1e-2, "adapters.a_init": "peft"},
    ]
    assert points[1].tags == {
        "rankstudy.sweep": "tiny-study",
        "rankstudy.setting.training.lr": "0.01",
        "rankstudy.setting.adapters.a_init": '"peft"',
    }
