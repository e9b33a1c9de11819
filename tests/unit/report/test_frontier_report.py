"""The report of a budget sweep, built from a constructed MLflow store whose frontier answers
are worked out by hand: costs are powers of ten (a log-cost interpolation is a fraction of a
decade), and the grid at budget 1.0 scores 0.825 for 1e12 FLOPs and 100 device-seconds, so the
target is 0.815."""

import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from chromium import column, render
from rankstudy_report import ReportError, build_report
from report_store import fill_study, fill_sweep
from studies import ROOT


def point(aurac, flops, seconds, std=0.01):
    return {"aurac": aurac, "std": std, "flops": flops, "device_seconds": seconds}


SWEEP = {
    0.25: {
        "lora_grid": point(0.760, 2.5e11, 25, 0.004),
        "dylora": point(0.700, 1e10, 1),
        "nested_multiloss": point(0.760, 1e11, 10),
        "matryoshka": point(0.550, 1e10, 1),
        "matryoshka_truncated_p": point(0.600, 1e9, 0.1),
    },
    1.0: {
        "lora_grid": point(0.825, 1e12, 100, 0.004),
        "dylora": point(0.770, 1e11, 10),
        "nested_multiloss": point(0.815, 1e12, 100),  # on the target exactly
        "matryoshka": point(0.566, 1e11, 10),
        "matryoshka_truncated_p": point(0.680, 1e10, 1),
    },
    4.0: {
        "lora_grid": point(0.850, 4e12, 400, 0.004),
        "dylora": point(0.800, 1e12, 100),
        "nested_multiloss": point(0.840, 1e13, 1000),
        "matryoshka": point(0.600, 1e12, 100),
        "matryoshka_truncated_p": point(0.700, 1e11, 10),
    },
    16.0: {"dylora": point(0.830, 1e13, 1000, None), "matryoshka": point(0.620, 1e13, 1000)},
}
POINTS = {"lora_grid": 3, "dylora": 4, "nested_multiloss": 3, "matryoshka": 4}
POINTS["matryoshka_truncated_p"] = 3
PATHS = ":".join(str(ROOT / d) for d in ("platform", "dashboards"))  # this tree's, not installed
NOT_REACHED, OUTSIDE = "not reached within the sweep", "outside its sweep"


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """The sweep in experiment "budgets"; an older, superseded run at budget 1.0 first."""
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    stale = {1.0: {"lora_grid": point(0.1, 1e12, 100), "dylora": point(0.1, 1e11, 10)}}
    fill_sweep(uri, "budgets", "planted-budget", stale)
    time.sleep(0.05)  # the real point starts later: the newest run at a budget is the one read
    runs = fill_sweep(uri, "budgets", "planted-budget", SWEEP)
    return root, uri, runs


@pytest.fixture(scope="module")
def sweep_report(sweep_store):
    root, uri, _ = sweep_store
    page = build_report(uri, root / "report", experiment="budgets", log=False)
    return page, render(page, "report-frontier")


def test_the_frontier_table_holds_the_hand_worked_readings(sweep_report):
    _, shown = sweep_report
    table = shown.tables["frontier-table"]
    assert table[0] == [
        "method",
        "AURAC at the grid's FLOPs",
        "least FLOPs reaching 0.825 − 0.01",
        "× the grid's FLOPs",
        "AURAC at the grid's device-seconds",
        "least device-seconds reaching it",
    ]
    rows = {r[0]: r[1:] for r in table[1:]}
    assert list(rows) == list(SWEEP[0.25])[1:]  # the order the points scored them in
    assert rows == {
        # 0.800 at 1e12; 0.815 is half-way from 0.800 (1e12) to 0.830 (1e13): 10^12.5
        "dylora": ["0.800", "3.16e+12", "3.16×", "0.800", "316.2"],
        # its budget-1.0 point lands on the target at the grid's own compute
        "nested_multiloss": ["0.815", "1e+12", "1.00×", "0.815", "100.0"],
        "matryoshka": ["0.600", NOT_REACHED, "–", "0.600", NOT_REACHED],
        # its points stop at 1e11 FLOPs / 10 device-seconds, below the grid's
        "matryoshka_truncated_p": [OUTSIDE, NOT_REACHED, "–", OUTSIDE, NOT_REACHED],
    }
    assert "Read against lora_grid at budget ×1.0: AURAC 0.825 for 1e+12 FLOPs and 100.0" in (
        re.sub(r"\s+", " ", shown.blocks["frontier"])  # the frontier's note, not the page
    )


def test_the_points_table_holds_every_point_and_the_newest_run_at_each_budget(sweep_report):
    _, shown = sweep_report
    rows = shown.tables["sweep-points"][1:]
    assert len(rows) == sum(POINTS.values())
    by_key = {(r[0], r[1]): r[2:] for r in rows}
    assert by_key[("dylora", "×1.0")] == ["0.770", "0.010", "1e+11", "10.0"]  # not the stale 0.1
    assert by_key[("lora_grid", "×4.0")] == ["0.850", "0.004", "4e+12", "400.0"]
    assert by_key[("dylora", "×16.0")] == ["0.830", "n/a", "1e+13", "1000.0"]  # one seed


def line_markers(svg_text: str, method: str) -> tuple[int, int]:
    """(vertices of the method's line, markers drawn on it) in a frontier chart's SVG."""
    tree = ET.fromstring(svg_text)
    group = next(g for g in tree.iter() if g.get("id") == f"frontier-{method}")
    path = next(e for e in group if e.tag.endswith("path"))
    markers = [e for e in group.iter() if e.tag.endswith("use")]
    return len(re.findall(r"[ML] ", path.get("d"))), len(markers)


def test_each_chart_draws_one_line_per_method_through_its_points(sweep_report):
    page, shown = sweep_report
    assert shown.errors == [] and shown.requests == []
    assert len(shown.charts) == 4  # two frontiers, rank curves, AURAC against cost (no loss)
    for axis in ("flops", "device_seconds"):
        svg = (page.parent / "figures" / f"frontier_{axis}.svg").read_text()
        assert svg in page.read_text()  # inlined in the page
        drawn = {m: line_markers(svg, m) for m in POINTS}
        assert drawn == {m: (n, n) for m, n in POINTS.items()}
        assert len(re.findall(r'id="frontier-', svg)) == len(POINTS)


def test_the_page_details_the_point_the_grid_is_read_at(sweep_report):
    _, shown = sweep_report
    frontier = re.sub(r"\s+", " ", shown.blocks["frontier"])
    assert "details the study planted-budget-x1 (budget ×1.0)" in frontier
    assert column(shown.tables["aurac-table"], "AURAC log2")["dylora"] == "0.770"


def test_a_run_of_the_sweep_gets_the_frontier_and_its_own_details(sweep_store):
    root, uri, runs = sweep_store
    page = build_report(uri, root / "by-run", run_id=runs[4.0], log=False)
    html = page.read_text()
    assert 'id="frontier-table"' in html and "planted-budget-x4 (budget ×4.0)" in html


def test_sweep_flag_names_the_sweep_and_defaults_the_experiment_to_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_sweep(uri, "swept", "swept", {1.0: SWEEP[1.0], 4.0: SWEEP[4.0]})
    fill_study(uri, "swept", 1, [1, 2], [0], 1, 10)  # a newer study that is no budget point
    page = build_report(uri, tmp_path / "r", sweep="swept", log=False)
    assert 'id="frontier-table"' in page.read_text()
    with pytest.raises(ReportError, match=r"--sweep: .*'nope'; its sweeps: \['swept'\]"):
        build_report(uri, tmp_path / "r2", experiment="swept", sweep="nope", log=False)
    proc = subprocess.run(
        [sys.executable, "-m", "rankstudy.commands.cli", "report", "--help"],
        capture_output=True,
        text=True,
    )
    assert "--sweep NAME" in proc.stdout and "rankstudy.budget" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "rankstudy.commands.cli", "report"],
        capture_output=True,
        text=True,
        env={"MLFLOW_TRACKING_URI": uri, "PATH": "", "PYTHONPATH": PATHS},
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "give --experiment, --run or --sweep" in proc.stderr


def test_a_single_study_gets_no_frontier(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "plain", 2, [1, 2, 4], [0, 1], 1, 10)
    page = build_report(uri, tmp_path / "r", experiment="plain", log=False)
    assert 'id="frontier' not in page.read_text()
    assert not list((tmp_path / "r" / "figures").glob("frontier_*"))
