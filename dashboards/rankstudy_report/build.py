"""One self-contained HTML page per study: figures inlined as SVG, styles and the one small
script (sortable tables) inlined, nothing fetched when it opens. Written to a folder and logged
to the study's parent run beside its figures."""

from __future__ import annotations

import math
import time
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from mlflow.tracking import MlflowClient

from rankstudy.core.arms import GRID_METHOD
from rankstudy.core.frontier import FrontierRow
from rankstudy.core.verdict import p_better, pair_gap
from rankstudy.core.verdict_records import Interval, Verdict
from rankstudy.study.regime_map import MapCell
from rankstudy_report import charts
from rankstudy_report.collect import StudyView, collect
from rankstudy_report.regime import RegimeView, collect_regime
from rankstudy_report.searches import IMPORTANCE_MIN_TRIALS, ArmSearchView, collect_searches
from rankstudy_report.sweep import SweepView, collect_sweep
from rankstudy_report.tables import with_downloads, write_csvs

ARTIFACT_DIR = "report"


def num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def sci(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def cost(value: float, axis: str) -> str:
    """A cost as the report writes it on that axis: FLOPs to 3 figures, seconds to 0.1."""
    return sci(value) if axis == "flops" else num(value, 1)


def reached(row: FrontierRow) -> str:
    """The frontier table's "least compute" cell: the cost, an upper bound when the method
    reached the target at its cheapest point already, or that the sweep never got there."""
    if row.reached_at is None:
        return "not reached within the sweep"
    return ("≤ " if row.reached_at_cheapest else "") + cost(row.reached_at, row.axis)


def param(value: str) -> str:
    """A sampled hyperparameter as MLflow holds it (text), numbers to four figures."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def best_by_rank(view: StudyView) -> dict[int, float]:
    """rank -> the highest mean test score any method reached there."""
    best: dict[int, float] = {}
    for m in view.methods.values():
        for r, s in zip(m.ranks, m.scores, strict=True):
            best[r] = max(best.get(r, -math.inf), s)
    return best


def headline(view: StudyView) -> list[tuple[str, str, str]]:
    """(label, value, detail) cards: the answer before the evidence."""
    cards = []
    scored = view.methods
    if scored:
        top = max(scored.values(), key=lambda m: m.summary.aurac_log2)
        cards.append(
            ("Best AURAC", top.name, f"{top.summary.aurac_log2:.3f} on the log2 rank axis")
        )
        points = {
            n: (m.cost.device_hours, m.summary.aurac_log2)
            for n, m in scored.items()
            if m.cost.device_hours
        }
        front = charts.pareto_front(points)
        if front:
            cards.append(("Pareto front (device-hours)", " → ".join(front), "cheapest first"))
    grid, mat = view.methods.get(GRID_METHOD), view.methods.get("matryoshka")
    if grid and mat and grid.cost.flops:
        cards.append(
            (
                "Matryoshka vs the LoRA grid",
                f"{mat.cost.flops / grid.cost.flops:.2f}× the FLOPs",
                f"AURAC {mat.summary.aurac_log2:.3f} vs {grid.summary.aurac_log2:.3f}",
            )
        )
    if view.missing:
        cards.append(("Missing", f"{len(view.missing)} method(s)", ", ".join(view.missing)))
    return cards


def verdict_view(verdict: Verdict | None) -> dict | None:
    """What the page shows of the study's verdict: what to deploy, each method's AURAC (log2)
    interval, and each method minus the best by AURAC (log2); None for a study without one."""
    if verdict is None:
        return None
    intervals = verdict.intervals
    best = intervals.best
    against = []
    for m in intervals.methods:
        if m != best:
            gap = pair_gap(intervals, m, best)
            against.append((m, gap, p_better(intervals, m, best), gap.separated))
    return {
        "choice": verdict.recommendation,
        "intervals": intervals,
        "level": f"{intervals.confidence:.0%}",
        "aurac": {m: i.aurac_log2 for m, i in intervals.methods.items()},
        "best": best,
        "against": against,
    }


def interval(i: Interval | MapCell | None, signed: bool = False) -> str:
    """[low, high] of an interval (or a regime map's cell), "–" when there is none."""
    if i is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"[{f.format(i.low)}, {f.format(i.high)}]"


def params_of(view: StudyView) -> list[str]:
    return sorted({k for t in view.trials for k in t.params})


def rules_of(view: StudyView) -> list[str]:
    """The inference rules trials were validated under, the paper's first."""
    return sorted({r for t in view.trials for r in t.validation}, key=lambda r: (r != "scaled", r))


def sweep_figures(sweep: SweepView) -> dict[str, str]:
    """One frontier chart per cost axis, named frontier_<axis>."""
    lines, tables = sweep.lines, sweep.tables
    return {
        f"frontier_{axis}": charts.frontier(
            lines, axis, rows[0].grid if rows else None, sweep.tolerance
        )
        for axis, rows in tables.items()
    }


def render(
    view: StudyView,
    figures: dict[str, str],
    sweep: SweepView | None = None,
    regime: RegimeView | None = None,
    searches: dict[str, ArmSearchView] | None = None,
) -> str:
    env = Environment(
        loader=PackageLoader("rankstudy_report"), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters |= {
        "num": num,
        "sci": sci,
        "param": param,
        "reached": reached,
        "interval": interval,
    }
    arms: dict[str, list] = {}
    for t in view.trials:
        arms.setdefault(t.arm, []).append(t)
    ranks = sorted({r for m in view.methods.values() for r in m.ranks})
    return env.get_template("report.html.j2").render(
        view=view,
        figures=figures,
        sweep=sweep,
        regime=regime,
        searches=searches or {},
        importance_min=IMPORTANCE_MIN_TRIALS,
        cards=headline(view),
        verdict=verdict_view(view.verdict),
        ranks=ranks,
        extra_metrics=sorted({k for m in view.methods.values() for k in m.extra}),
        best=best_by_rank(view),
        best_aurac=max((m.summary.aurac_log2 for m in view.methods.values()), default=None),
        priced=any(m.cost.money is not None for m in view.methods.values()),
        arms=arms,
        params=params_of(view),
        rules=rules_of(view),
        spec_yaml=yaml.safe_dump(view.spec, sort_keys=False),
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(view.started / 1000)),
        built=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def build_report(
    tracking_uri: str,
    out_dir: str | Path,
    experiment: str | None = None,
    run_id: str | None = None,
    log: bool = True,
    sweep: str | None = None,
    csv_dir: str | Path | None = None,
) -> Path:
    """Read the study from MLflow, write out_dir/report.html and out_dir/figures/*.svg, and
    (log=True) log both to the study's parent run under report/. When the study is a point of
    a budget sweep (or `sweep` names one; its experiment defaults to the sweep's name), the
    page opens with the sweep's frontier and details the point the grid is read at, unless
    run_id names another; a point of a sweep of settings opens with its regime map and details
    the newest point. Every table of the page links its CSV; csv_dir: also written there."""
    if sweep is not None and experiment is None and run_id is None:
        experiment = sweep  # a sweep records into its base spec's experiment, by default its name
    client = MlflowClient(tracking_uri)
    regime = collect_regime(client, experiment, run_id, sweep)
    found = None if regime else collect_sweep(client, experiment, run_id, sweep)
    shown = found or regime
    view = collect(tracking_uri, experiment, run_id or (shown.reference_run if shown else None))
    figures = sweep_figures(found) if found else {}
    if regime and regime.cells:
        figures["regime_map"] = charts.regime_map(regime)
    if view.methods:
        figures["rank_curves"] = charts.rank_curves(view)
        figures["cost_front"] = charts.cost_front(view)
    if any(t.loss for t in view.trials):
        figures["loss_curves"] = charts.loss_curves(view)
    searches, across = collect_searches(client, view.run_id)
    for arm, search in searches.items():
        figures |= {f"search_{arm}_{kind}": text for kind, text in search.figures.items()}
    if across:
        figures["search_across_arms"] = across
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, text in figures.items():
        (out / "figures" / f"{name}.svg").write_text(text)
    page = out / "report.html"
    html = with_downloads(render(view, figures, found, regime, searches))
    page.write_text(html)
    if csv_dir is not None:
        write_csvs(html, csv_dir)
    if log:
        client.log_artifact(view.run_id, str(page), ARTIFACT_DIR)
        if figures:
            client.log_artifacts(view.run_id, str(out / "figures"), f"{ARTIFACT_DIR}/figures")
    return page
