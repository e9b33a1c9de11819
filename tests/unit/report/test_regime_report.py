"""The report of a sweep of settings: the regime map built from a constructed MLflow store in
which every point is a study tagged with its settings and holding a verdict whose differences
are known in advance (each example of a method scores a fixed shift above a shared base)."""

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from chromium import render
from rankstudy.core import mlflow_names as names
from rankstudy.core.intervals import recommend, resample_curves, study_intervals
from rankstudy.core.scoring import total_cost
from rankstudy.core.verdict_records import Verdict
from rankstudy.tracking.tracker import StudyTracker
from rankstudy_report import build_report
from report_store import make_result, make_study_summary, make_summary

RANKS = [1, 2, 4]
# (lr, shift) -> each method's shift above the base: matryoshka wins at small rates, ties
# DyLoRA at shift 0.5 and lr 1e-4, and loses at the large rate
POINTS = {
    (1e-4, 0.1): {"matryoshka": 0.3, "dylora": 0.2, "lora_grid": 0.25},
    (1e-2, 0.1): {"matryoshka": 0.1, "dylora": 0.2, "lora_grid": 0.3},
    (1e-4, 0.5): {"matryoshka": 0.2, "dylora": 0.2, "lora_grid": 0.1},
    (1e-2, 0.5): {"matryoshka": 0.0, "dylora": 0.2, "lora_grid": 0.3},
}


def fill_regime(uri: str, sweep: str) -> None:
    """Each point as a sweep's point records it: a study run with the sweep's tags, a summary
    run per method, and its verdict."""
    tracker = StudyTracker(uri, sweep)
    base = np.random.default_rng(0).uniform(0, 0.5, (len(RANKS), 60))
    for (lr, shift), shifts in POINTS.items():
        name = f"{sweep}-lr{lr}-shift{shift}"
        tags = {
            names.SWEEP_TAG: sweep,
            names.SETTING_TAG_PREFIX + "training.lr": str(lr),
            names.SETTING_TAG_PREFIX + "task.shift": str(shift),
        }
        tracker.start_study(name, {"name": name, "methods": list(shifts)}, tags=tags)
        examples = {m: {0: base + s} for m, s in shifts.items()}
        intervals = study_intervals(RANKS, examples, 200, 0)
        summaries = {
            m: make_summary(
                ranks=RANKS,
                scores=list((base + s).mean(axis=1)),
                scores_by_seed={"0": list((base + s).mean(axis=1))},
                aurac_log2=float((base + s).mean()),
                aurac_linear=float((base + s).mean()),
                cost=total_cost([make_result()], None),
            )
            for m, s in shifts.items()
        }
        costs = dict.fromkeys(shifts, 1.0)
        choice = recommend(RANKS, resample_curves(examples, 200, 0), costs, 0.01)
        verdict = Verdict(intervals=intervals, recommendation=choice)
        for m, summary in summaries.items():
            tracker.log_method(m, summary, None)
        tracker.finish_study(make_study_summary(study=name, methods=summaries, verdict=verdict))


@pytest.fixture(scope="module")
def regime_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("regime")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    fill_regime(uri, "map")
    page = build_report(uri, root / "report", sweep="map", log=False)
    return page, render(page, "report-regime-map")


def test_the_map_table_holds_each_points_known_differences(regime_report):
    _, shown = regime_report
    table = shown.tables["regime-table"]
    assert table[0] == ["task.shift", "training.lr", "− dylora", "− lora_grid"]
    rows = {(r[0], r[1]): r[2:] for r in table[1:]}
    assert rows == {
        ("0.1", "0.0001"): ["+0.100 [+0.100, +0.100] +", "+0.050 [+0.050, +0.050] +"],
        ("0.1", "0.01"): ["-0.100 [-0.100, -0.100] −", "-0.200 [-0.200, -0.200] −"],
        ("0.5", "0.0001"): ["+0.000 [+0.000, +0.000] =", "+0.100 [+0.100, +0.100] +"],
        ("0.5", "0.01"): ["-0.200 [-0.200, -0.200] −", "-0.300 [-0.300, -0.300] −"],
    }
    text = re.sub(r"\s+", " ", shown.blocks["regime-map"])  # the map's notes, not the page
    assert "against dylora 1 ahead, 2 behind, 1 tied" in text
    assert "4 of 4 points hold a verdict" in text


def test_the_map_draws_one_line_per_method_and_panel(regime_report):
    page, shown = regime_report
    assert shown.errors == [] and shown.requests == []
    svg = (page.parent / "figures" / "regime_map.svg").read_text()
    assert svg in page.read_text()
    tree = ET.fromstring(svg)
    for panel in (0, 1):  # one panel per shift, the learning rate on the x axis
        for other in ("dylora", "lora_grid"):
            group = next(g for g in tree.iter() if g.get("id") == f"regime-{panel}-{other}")
            path = next(e for e in group if e.tag.endswith("path"))
            assert len(re.findall(r"[ML] ", path.get("d"))) == 2  # two rates
