"""The HTML report, built from MLflow alone and opened in headless Chromium: every chart drawn,
no console error, no request leaving the file, tables holding what MLflow holds, and a study
with a failed arm or a missing method reported as such instead of crashing."""

import base64
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from chromium import column, html_tables, render, rows_after_clicks
from rankstudy_report import ReportError, build_report
from rankstudy_report.charts import pareto_front
from rankstudy_report.collect import TrialRun, why_missing
from report_store import fill_study

RANKS = [1, 2, 4, 8, 16]
SEEDS = [0, 1, 2]


def test_pareto_front_keeps_only_the_unbeaten():
    points = {
        "cheap_weak": (1.0, 0.50),
        "mid": (2.0, 0.70),
        "dominated": (3.0, 0.60),  # mid is cheaper and better
        "tie_costlier": (2.5, 0.70),  # as good as mid, but dearer
        "best": (10.0, 0.90),
    }
    assert pareto_front(points) == ["cheap_weak", "mid", "best"]
    assert pareto_front({"only": (1.0, 0.1)}) == ["only"]


def trial(arm, status, seed=None, failure=None):
    return TrialRun("id", "name", arm, 0, seed, status, {}, {}, "", failure)


def test_why_a_method_is_missing_names_its_arm_and_cause():
    failed = [trial("dylora", "failed", failure="loss is NaN at step 3")] * 2
    assert why_missing("dylora", failed, "finished") == (
        "arm dylora: all 2 trials failed (loss is NaN at step 3)"
    )
    assert why_missing("matryoshka", failed, "killed") == "arm matryoshka: no trial was recorded"
    untested = [trial("matryoshka", "ok"), trial("matryoshka", "ok")]
    assert why_missing("matryoshka_truncated_p", untested, "killed") == (
        "arm matryoshka: no chosen trial was tested"
    )
    repeat_failed = [trial("dylora", "chosen", "0"), trial("dylora", "failed", "1", "OOM")]
    assert why_missing("dylora", repeat_failed, "finished") == (
        "arm dylora: its chosen trial failed at seed 1 (OOM)"
    )
    assert why_missing("lora_grid", [], "killed") == "no LoRA-grid trial was recorded"


@pytest.fixture(scope="module")
def failed_arm_study(tmp_path_factory):
    """Four methods over three seeds; every trial of m2 failed."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    summaries = fill_study(uri, "odd-study", 4, RANKS, SEEDS, 3, 200, failed=frozenset({"m2"}))
    page = build_report(uri, root / "report", experiment="odd-study")
    return uri, summaries, page, render(page, "report-failed-arm")


def test_report_opens_offline_with_every_chart_drawn(failed_arm_study):
    _, _, page, shown = failed_arm_study
    assert shown.errors == [] and shown.requests == []
    assert len(shown.charts) == 3  # rank curves, AURAC against cost, training loss
    for chart in shown.charts:
        assert chart["width"] > 300 and chart["height"] > 200 and chart["marks"] > 20
    assert shown.screenshot.stat().st_size > 10_000
    html = page.read_text()
    assert re.search(r'(src|href)="(https?:)?//', html) is None  # nothing to fetch


def test_report_tables_hold_what_mlflow_holds(failed_arm_study):
    uri, summaries, _, shown = failed_arm_study
    client = MlflowClient(uri)
    runs = {
        r.data.tags["method"]: r
        for r in client.search_runs(
            [client.get_experiment_by_name("odd-study").experiment_id],
            "tags.`rankstudy.kind` = 'method'",
        )
    }
    assert set(runs) == {"m0", "m1", "m3"}
    rank_rows = shown.tables["rank-table"]
    assert rank_rows[0] == ["method", *(f"r{r}" for r in RANKS)]
    for method, run in runs.items():
        logged = sorted(
            client.get_metric_history(run.info.run_id, "test_score"), key=lambda m: m.step
        )
        row = next(r for r in rank_rows if r[0] == method)
        assert row[1:] == [f"{m.value:.3f}" for m in logged]
        assert row[1:] == [f"{s:.3f}" for s in summaries[method].scores]
    # m3's curve is the highest at every rank: its cells, and only its, are marked best
    assert shown.best["rank-table"] == ["m3"] * len(RANKS)
    assert next(r for r in rank_rows if r[0] == "planted reference")  # the reference row
    aurac = column(shown.tables["aurac-table"], "AURAC log2")
    assert aurac == {m: f"{runs[m].data.metrics['aurac_log2']:.3f}" for m in runs}
    cost = shown.tables["cost-table"]
    flops, money = column(cost, "FLOPs"), column(cost, "money")
    for m, s in summaries.items():
        assert flops[m] == f"{s.cost.flops:.3g}"
        assert money[m] == f"{s.cost.money:.2f}"
    # 3 search trials (the first-seed test pass resumes trial 0 in its folder) + 2 seed repeats
    assert column(cost, "runs paid for")["m0"] == "5"


def test_report_says_what_is_missing_and_keeps_the_failed_trials(failed_arm_study):
    *_, shown = failed_arm_study
    assert shown.blocks["missing"].splitlines()[1:] == [
        "m2: arm m2: all 3 trials failed (loss is NaN at step 3)"
    ]
    # logged with no verdict
    assert shown.blocks["no-intervals"].startswith("Intervals are not available for this study")
    failed = shown.tables["search-m2"]
    assert len(failed) == 4 and all("failed: loss is NaN" in row[-1] for row in failed[1:])
    runs = shown.tables["search-m0"][1:]  # 3 search trials, then trial 0 again at seeds 1, 2
    assert [(r[0], r[1], r[-1]) for r in runs] == [
        ("0", "0", "chosen"),
        ("0", "1", "chosen"),
        ("0", "2", "chosen"),
        ("1", "", "ok"),
        ("2", "", "ok"),
    ]
    assert shown.tables["versions"][0][0] == "deepspeed"


def test_the_headline_cards_give_the_best_the_front_and_what_is_missing(failed_arm_study):
    """The cards above the tables, by hand from the summaries: the best AURAC (log2), the
    methods no cheaper one beats (device-hours, cheapest first), the missing method."""
    _, summaries, _, shown = failed_arm_study
    scored = {m: s for m, s in summaries.items() if m != "m2"}
    best = max(scored, key=lambda m: scored[m].aurac_log2)
    front, level = [], -1.0
    for m in sorted(scored, key=lambda m: scored[m].cost.device_hours):
        if scored[m].aurac_log2 > level:
            front.append(m)
            level = scored[m].aurac_log2
    assert shown.cards == [
        ("Best AURAC", best, f"{scored[best].aurac_log2:.3f} on the log2 rank axis"),
        ("Pareto front (device-hours)", " → ".join(front), "cheapest first"),
        ("Missing", "1 method(s)", "m2"),
    ]


def test_clicking_a_heading_sorts_its_table_by_number(failed_arm_study):
    """A person sorting the AURAC table: ascending on the first click, descending on the
    second; numbers as numbers (FLOPs in e-notation too), names as text."""
    _, summaries, page, _ = failed_arm_study
    scored = {m: s for m, s in summaries.items() if m != "m2"}
    clicks = [("aurac-table", "AURAC log2")] * 2 + [("cost-table", "FLOPs")]
    clicks += [("cost-table", "method")] * 2
    up, down, cheap, names, reverse = (
        [r[0] for r in rows] for rows in rows_after_clicks(page, clicks)
    )
    assert up == sorted(scored, key=lambda m: scored[m].aurac_log2) == down[::-1]
    assert cheap == sorted(scored, key=lambda m: scored[m].cost.flops)
    assert names == sorted(scored) == reverse[::-1]


def test_report_is_logged_to_the_study_parent_run(failed_arm_study):
    uri, *_ = failed_arm_study
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("odd-study").experiment_id
    parent = client.search_runs([experiment], "tags.`rankstudy.kind` = 'study'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report/report.html", "report/figures"}
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report/figures")}
    assert figures == {
        f"report/figures/{n}.svg" for n in ("rank_curves", "cost_front", "loss_curves")
    }


def report_cli(experiment: str, uri: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`rankstudy report --experiment EXPERIMENT` into out, not logged, run in out's parent."""
    cmd = [sys.executable, "-m", "rankstudy.commands.cli", "report", "--experiment", experiment]
    cmd += ["--tracking-uri", uri, "--out", str(out), "--no-log", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)


def test_every_table_is_taken_away_as_the_csv_its_link_holds(failed_arm_study, tmp_path):
    """`--csv DIR` writes each table the browser shows, cell for cell ("–", no value: empty),
    and each table's download link decodes to that same file."""
    uri, summaries, page, shown = failed_arm_study
    proc = report_cli("odd-study", uri, tmp_path / "r", "--csv", str(tmp_path / "csv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"tables: {tmp_path / 'csv'}" in proc.stdout
    files = {p.stem: p.read_text() for p in (tmp_path / "csv").glob("*.csv")}
    seen = {
        table: [["" if c == "–" else " ".join(c.split()) for c in row] for row in rows]
        for table, rows in shown.tables.items()
    }
    assert {k: list(csv.reader(io.StringIO(v))) for k, v in files.items()} == seen
    assert {"rank-table", "aurac-table", "cost-table", "search-m2", "versions"} <= set(files)
    flops = column(seen["cost-table"], "FLOPs")
    assert {m: float(flops[m]) for m in summaries} == {
        m: float(f"{s.cost.flops:.3g}") for m, s in summaries.items()
    }
    links = re.findall(
        r'<caption class="csv"><a download="([^"]+)\.csv" href="data:text/csv;base64,([^"]+)">',
        page.read_text(),
    )
    assert {name: base64.b64decode(data).decode() for name, data in links} == files


def test_a_study_with_no_result_yet_still_gets_a_report(tmp_path):
    """Every arm failed (or the study was killed before any test pass): no method run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "all-failed", 2, RANKS, [0], 2, 50, failed=frozenset({"m0", "m1"}))
    page = build_report(uri, tmp_path / "report", experiment="all-failed", log=False)
    shown = render(page, "report-all-failed")
    assert shown.errors == [] and shown.charts == []
    assert "m0: arm m0: all 2 trials failed" in shown.text
    assert shown.cards == [("Missing", "2 method(s)", "m0, m1")]  # the one headline card


def test_one_seed_shows_no_spread_instead_of_a_measured_zero(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "one-seed", 2, RANKS, [0], 2, 50)
    page = build_report(uri, tmp_path / "report", experiment="one-seed", log=False)
    shown = render(page, "report-one-seed")
    for header in ("AURAC log2", "± seeds"):
        assert set(column(shown.tables["aurac-table"], header)) == {"m0", "m1"}
    assert set(column(shown.tables["aurac-table"], "± seeds").values()) == {"n/a"}
    assert float(column(shown.tables["aurac-table"], "AURAC log2")["m0"]) > 0


def test_unknown_experiment_is_an_error_naming_the_flag(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "there", 1, [1, 2], [0], 1, 10)
    with pytest.raises(ReportError, match=r"--experiment: no experiment 'nope'.*'there'"):
        build_report(uri, tmp_path / "r", experiment="nope")
    proc = subprocess.run(
        [sys.executable, "-m", "rankstudy.commands.cli", "report", "--experiment", "nope"],
        capture_output=True,
        text=True,
        env={"MLFLOW_TRACKING_URI": uri, "PATH": ""},
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "--experiment: no experiment 'nope'" in proc.stderr
    assert not Path(tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def tiny_study(served_study):
    """A real study (conftest.served_study: two seeds, seven methods) whose end built the
    report and registered its recommended rank: its folder and summary."""
    _, out = served_study
    return out, json.loads((out / "study_summary.json").read_text())


@pytest.mark.slow
def test_report_of_a_real_study_matches_its_results(tiny_study):
    root, summary = tiny_study
    page = Path(summary["report"])
    assert page == root / "report" / "report.html"
    shown = render(page, "report-tiny-study")
    assert shown.errors == [] and shown.requests == [] and len(shown.charts) == 3
    assert all(c["width"] > 300 and c["marks"] > 20 for c in shown.charts)
    # the tables, read from MLflow, agree with the summary the study computed from its trials
    rows = {r[0]: r[1:] for r in shown.tables["rank-table"][1:]}
    for name, m in summary["methods"].items():
        assert rows[name] == [f"{s:.3f}" for s in m["scores"]]
    reference = summary["reference"]
    assert rows["planted reference"] == [f"{reference[str(r)]:.3f}" for r in (1, 2, 4, 8)]
    aurac = column(shown.tables["aurac-table"], "AURAC log2")
    spread = column(shown.tables["aurac-table"], "± seeds")
    flops = column(shown.tables["cost-table"], "FLOPs")
    for name, m in summary["methods"].items():
        assert aurac[name] == f"{m['aurac_log2']:.3f}"
        assert spread[name] == f"{m['aurac_log2_std']:.3f}"
        assert flops[name] == f"{m['cost']['flops']:.3g}"
    # each arm's search: its one trial and that trial repeated at seed 1; validation scores as
    # the study recorded them
    state = json.loads((root / "study_state.json").read_text())
    for arm in ("lora_r1", "lora_r2", "lora_r4", "lora_r8", "dylora", "matryoshka"):
        table = shown.tables[f"search-{arm}"]
        assert len(table) == 1 + 2
        (recorded,) = [t for t in state["trials"].values() if t["arm"] == arm]
        validation = table[1][table[0].index("validation (scaled)")]
        assert validation == f"{recorded['selection_metric']:.4f}"


@pytest.mark.slow
def test_the_study_end_registers_its_recommended_rank(tiny_study):
    """tracking.register_as: the verdict's method at its rank, exported and registered."""
    root, summary = tiny_study
    choice = summary["verdict"]["recommendation"]
    assert summary["registered"] == "models:/tiny-served/1"
    version = MlflowClient(summary["mlflow"]["tracking_uri"]).get_model_version("tiny-served", "1")
    assert (version.tags["method"], version.tags["rank"]) == (choice["method"], str(choice["rank"]))
    config = json.loads((root / "registered" / "adapter_config.json").read_text())
    assert config["r"] == choice["rank"]


@pytest.mark.slow
def test_rankstudy_report_rebuilds_the_same_tables_from_mlflow_alone(tiny_study, tmp_path):
    """`rankstudy report` on the study's experiment: the same tables as the study's own."""
    _, summary = tiny_study
    out = tmp_path / "rebuilt"
    proc = report_cli("tiny-served", summary["mlflow"]["tracking_uri"], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in proc.stdout
    again = render(out / "report.html", "report-tiny-study-cli")
    first = render(Path(summary["report"]), "report-tiny-study")
    assert again.tables == first.tables and again.errors == []


@pytest.mark.slow
def test_a_large_study_stays_a_small_page(tmp_path):
    """10 methods x 10 ranks x 3 seeds x 20 trials per arm (build time: benchmarks/)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "large", 10, [2**i for i in range(10)], [0, 1, 2], 20, 500)
    page = build_report(uri, tmp_path / "report", experiment="large", log=False)
    assert page.stat().st_size < 5e6
    shown = render(page, "report-large")
    assert shown.errors == [] and len(shown.charts) == 3
    assert len(shown.tables["rank-table"]) == 1 + 10 + 1  # header, methods, reference
    assert shown.best["rank-table"] == ["m9"] * 10


def test_report_from_a_tracking_server_over_http(tmp_path, mlflow_server):
    """Written to and read from a served store, artifacts included, as on a cluster's head."""
    summaries = fill_study(mlflow_server, "served", 2, [1, 2, 4], [0, 1], 2, 20)
    page = build_report(mlflow_server, tmp_path / "report", experiment="served")
    aurac = column(html_tables(page.read_text())["aurac-table"], "AURAC log2")
    assert aurac == {m: f"{s.aurac_log2:.3f}" for m, s in summaries.items()}
    client = MlflowClient(mlflow_server)
    parent = client.search_runs(
        [client.get_experiment_by_name("served").experiment_id], "tags.`rankstudy.kind` = 'study'"
    )[0]
    assert "report/report.html" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }
