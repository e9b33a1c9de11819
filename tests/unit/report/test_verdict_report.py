"""The report of a study with a verdict, built from MLflow alone: the "Which rank should I
deploy?" card at the top, the AURAC interval column, the differences against the best method,
the interval bars on the rank-accuracy chart, each number as the constructed verdict has it;
and a study without a verdict reported as before, saying intervals are not available."""

import pytest

from chromium import column, render
from rankstudy.core.verdict import ONE_SEED, p_better, pair_gap
from rankstudy.core.verdict_records import Interval
from rankstudy_report import build_report
from report_store import fill_study, make_curve, make_intervals, make_verdict

RANKS = [1, 2, 4, 8, 16]


def interval(i: Interval, f: str = "{:.3f}") -> str:
    return f"[{f.format(i.low)}, {f.format(i.high)}]"


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """Three methods, one seed: m2 the best by AURAC, m1 tied with it, m0 separated from it;
    the recommendation is m0 (the cheapest of the three tied at its rank), not the best."""
    root = tmp_path_factory.mktemp("verdict")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    summaries = fill_study(uri, "verdict-study", 3, RANKS, [0], 2, 20, verdict=True)
    verdict = make_verdict(summaries, RANKS, [0])
    page = build_report(uri, root / "report", experiment="verdict-study", log=False)
    return verdict, page, render(page, "report-verdict")


def test_the_deploy_card_opens_the_page_with_the_recommendation(one_seed):
    verdict, page, shown = one_seed
    assert shown.errors == [] and shown.requests == [] and len(shown.charts) == 3
    choice = verdict.recommendation
    assert (choice.method, choice.candidates) == ("m0", ["m0", "m1", "m2"])
    html = page.read_text()
    assert html.index('id="deploy"') < html.index('class="cards"')  # before everything else
    score, best = choice.score, choice.best
    assert shown.blocks["deploy-answer"] == f"m0 at rank {choice.rank}"
    card = shown.blocks["deploy"]
    facts = [" ".join(line.split()) for line in card.splitlines()]  # each fact its own line
    assert facts[:2] == ["Which rank should I deploy?", f"m0 at rank {choice.rank}"]
    assert facts[2:6] == [
        f"test score {score.point:.3f} {interval(score)} (95% interval)",
        f"training FLOPs {choice.cost:.3g}",
        f"tied with the best: {best.method} at rank {best.rank} "
        f"({best.score.point:.3f} {interval(best.score)})",
        "tolerance 0.01",
    ]
    assert "(tied there: m0, m1, m2)" in " ".join(card.split())
    assert shown.blocks["intervals-note"] == f"Note, {ONE_SEED}."
    per_method = column(shown.tables["deploy-per-method"], "smallest tied rank")
    assert per_method == {m: str(r) for m, r in choice.per_method.items()}


def test_the_aurac_table_shows_each_interval_beside_the_aurac(one_seed):
    verdict, _, shown = one_seed
    table = shown.tables["aurac-table"]
    assert table[0][:3] == ["method", "AURAC log2", "95% interval"]
    methods = verdict.intervals.methods
    assert column(table, "95% interval") == {m: interval(i.aurac_log2) for m, i in methods.items()}
    assert column(table, "AURAC log2") == {
        m: f"{i.aurac_log2.point:.3f}" for m, i in methods.items()
    }


def test_the_differences_against_the_best_are_the_paired_intervals(one_seed):
    verdict, _, shown = one_seed
    intervals = verdict.intervals
    assert "Differences against the best method (m2, AURAC log2" in shown.text
    rows = {r[0]: r[1:] for r in shown.tables["pairs-table"][1:]}
    assert shown.tables["pairs-table"][0] == [
        "method",
        "− m2",
        "95% interval",
        "P(better)",
        "separated",
    ]
    pairs = intervals.pairs
    stored = {"m0": pairs["m0"]["m2"].p_better, "m1": pairs["m1"]["m2"].p_better}
    for m, state in (("m0", "separated"), ("m1", "not separated")):
        gap = pair_gap(intervals, m, "m2")
        assert rows[m] == [
            f"{gap.point:+.3f}",
            interval(gap, "{:+.3f}"),
            f"{stored[m]:.3f}",
            state,
        ]
    assert set(rows) == {"m0", "m1"}


def test_p_better_reads_a_pair_in_either_order():
    intervals = make_intervals(pairs={"a": {"b": make_curve(p_better=0.25)}})
    assert p_better(intervals, "a", "b") == 0.25
    assert p_better(intervals, "b", "a") == 0.75


def test_the_rank_chart_draws_the_score_intervals(one_seed):
    _, page, _ = one_seed
    chart = (page.parent / "figures" / "rank_curves.svg").read_text()
    assert "bars: 95% interval over test examples" in chart


def test_several_seeds_show_no_one_seed_note(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "two-seeds", 2, RANKS, [0, 1], 2, 20, verdict=True)
    html = build_report(uri, tmp_path / "report", experiment="two-seeds", log=False).read_text()
    assert 'id="deploy"' in html and 'id="pairs-table"' in html
    assert 'id="intervals-note"' not in html and ONE_SEED not in html


def test_a_study_without_a_verdict_says_intervals_are_not_available(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fill_study(uri, "older", 2, RANKS, [0, 1], 2, 20)
    page = build_report(uri, tmp_path / "report", experiment="older", log=False)
    shown = render(page, "report-no-verdict")
    assert shown.errors == [] and len(shown.charts) == 3
    assert shown.blocks["no-intervals"].startswith("Intervals are not available for this study")
    assert "deploy" not in shown.blocks and "Which rank should I deploy?" not in shown.text
    assert "pairs-table" not in shown.tables and "deploy-per-method" not in shown.tables
    assert "95% interval" not in shown.tables["aurac-table"][0]
    assert "bars:" not in (page.parent / "figures" / "rank_curves.svg").read_text()
