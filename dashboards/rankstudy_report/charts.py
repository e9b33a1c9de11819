"""The report's figures as SVG text: drawn with matplotlib, inlined in the page (no script, no
network), text kept as text so the files stay small and searchable."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display where reports are built
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from rankstudy.core.arms import GRID_METHOD
from rankstudy.core.frontier import FrontierPoint, GridReference
from rankstudy.core.verdict_records import Interval
from rankstudy_report.collect import StudyView

STYLE = {
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
MAX_POINTS = 400  # per loss line: a long run's every step would make the page megabytes


def palette(names: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point beats: as cheap or cheaper and as good or better,
    strictly in one. points: name -> (cost, score). Sorted by cost."""
    front = [
        n
        for n, (c, s) in points.items()
        if not any(
            (c2 <= c and s2 >= s) and (c2 < c or s2 > s) for m, (c2, s2) in points.items() if m != n
        )
    ]
    return sorted(front, key=lambda n: points[n])


def log_ticks(ax, count: int = 4) -> None:
    """Evenly spaced labelled ticks on a log x axis, whatever its span: matplotlib's own leave a
    span under a decade unlabelled or crowd it with long minor labels."""
    low, high = (math.log10(v) for v in ax.get_xlim())
    spots = [10 ** (low + (high - low) * (i + 0.5) / count) for i in range(count)]
    digits = next(  # as few digits as keep the labels apart
        (d for d in range(2, 7) if len({f"{t:.{d}g}" for t in spots}) == count), 7
    )
    ticks = [float(f"{t:.{digits}g}") for t in spots]
    ax.set_xticks(ticks, [f"{t:.{digits}g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: the page inlines it


def rank_curves(view: StudyView) -> str:
    """Every method's test score against rank (log2 axis), the spread over seeds as a band,
    each score's interval (the study's verdict) as error bars, the LoRA grid as its separately
    trained points, the planted reference dashed."""
    colors = palette(list(view.methods))
    intervals = view.verdict.intervals.methods if view.verdict else {}
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 4.6))
        ticks: set[int] = set()
        for name, m in view.methods.items():
            ticks |= set(m.ranks)
            grid = name == GRID_METHOD
            ax.plot(
                m.ranks,
                m.scores,
                "o:" if grid else ".-",
                color=colors[name],
                markersize=7 if grid else 4,
                linewidth=1 if grid else 1.8,
                label=f"{name}  (AURAC {m.summary.aurac_log2:.3f})",
            )
            seeds = [s for s in m.seed_scores.values() if None not in s]
            if len(seeds) > 1:
                low = [min(col) for col in zip(*seeds, strict=True)]
                high = [max(col) for col in zip(*seeds, strict=True)]
                ax.fill_between(m.ranks, low, high, color=colors[name], alpha=0.15, linewidth=0)
            if name in intervals:
                score_bars(ax, intervals[name].scores, colors[name])
        if view.reference:
            ranks = sorted(view.reference)
            ticks |= set(ranks)
            ax.plot(
                ranks,
                [view.reference[r] for r in ranks],
                "--",
                color="0.35",
                label="planted reference (top-k)",
            )
        ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(sorted(ticks), [str(r) for r in sorted(ticks)])
        ax.set_xlabel("rank")
        ax.set_ylabel("test score")
        bars = ""
        if view.verdict:
            level = view.verdict.intervals.confidence
            bars = f"; bars: {level:.0%} interval over test examples"
        ax.set_title(f"Rank-accuracy curves (band: spread over seeds{bars})", loc="left")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return svg(fig)


def score_bars(ax, scores: dict[int, Interval], color) -> None:
    """A method's per-rank score intervals as error bars (scores: rank -> interval)."""
    ranks = sorted(scores)
    points = [scores[r].point for r in ranks]
    ax.errorbar(
        ranks,
        points,
        yerr=[
            [p - scores[r].low for p, r in zip(points, ranks, strict=True)],
            [scores[r].high - p for p, r in zip(points, ranks, strict=True)],
        ],
        fmt="none",
        ecolor=color,
        elinewidth=1,
        capsize=2.5,
        alpha=0.7,
    )


def cost_front(view: StudyView) -> str:
    """AURAC against what it cost, device-hours and FLOPs on log axes, the Pareto front joined."""
    colors = palette(list(view.methods))
    axes_cost = [("device_hours", "device-hours"), ("flops", "training + evaluation FLOPs")]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
        for ax, (key, label) in zip(axes, axes_cost, strict=True):
            points = {
                n: (getattr(m.cost, key), m.summary.aurac_log2)
                for n, m in view.methods.items()
                if getattr(m.cost, key) > 0
            }
            front = pareto_front(points)
            if front:
                ax.plot(*zip(*(points[n] for n in front), strict=True), "-", color="0.6", zorder=1)
            for n, (c, s) in points.items():
                ax.scatter(
                    c,
                    s,
                    s=70 if n in front else 35,
                    color=colors[n],
                    edgecolors="black" if n in front else "none",
                    zorder=2,
                )
                ax.annotate(n, (c, s), textcoords="offset points", xytext=(5, 4), fontsize=7)
            ax.set_xscale("log")
            log_ticks(ax)
            ax.set_xlabel(label)
        axes[0].set_ylabel("AURAC (log2 rank axis)")
        axes[0].set_title("AURAC against cost (ringed: Pareto front)", loc="left")
        return svg(fig)


COST_LABELS = {"flops": "training + evaluation FLOPs", "device_seconds": "device-seconds"}


def frontier(
    lines: dict[str, list[FrontierPoint]],
    axis: str,
    grid: GridReference | None,
    tolerance: float,
) -> str:
    """AURAC against cost on a log x axis, one line per method through its budget points (in
    budget order), the spread over seeds as error bars, the grid's AURAC minus the tolerance
    dashed. Each method's line is the SVG group id="frontier-<method>"."""
    colors = palette(list(lines))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 4.4))
        for name, line in lines.items():
            shown = sorted((p for p in line if p.cost(axis) > 0), key=lambda p: p.budget)
            if not shown:
                continue
            is_grid = name == GRID_METHOD
            bars = ax.errorbar(
                [p.cost(axis) for p in shown],
                [p.aurac for p in shown],
                yerr=[p.std or 0.0 for p in shown],  # one seed: no bar
                fmt="o:" if is_grid else ".-",
                color=colors[name],
                markersize=6 if is_grid else 5,
                linewidth=1 if is_grid else 1.6,
                capsize=3,
                label=name,
            )
            bars.lines[0].set_gid(f"frontier-{name}")
        if grid is not None:
            ax.axhline(
                grid.aurac - tolerance,
                linestyle="--",
                color="0.35",
                linewidth=1,
                label=f"{GRID_METHOD} AURAC − {tolerance:g} (budget ×{grid.budget:g})",
            )
        ax.set_xscale("log")
        log_ticks(ax)
        ax.set_xlabel(COST_LABELS[axis])
        ax.set_ylabel("AURAC (log2 rank axis)")
        ax.set_title(
            f"AURAC against {COST_LABELS[axis]} over the budget sweep (bars: spread over seeds)",
            loc="left",
        )
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return svg(fig)


def loss_curves(view: StudyView) -> str:
    """Training loss of the trials the search chose, one line per trial and seed."""
    chosen = [t for t in view.trials if t.status == "chosen" and t.loss]
    colors = palette(sorted({t.arm for t in chosen}))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 3.8))
        labelled: set[str] = set()
        for t in chosen:
            steps = sorted(t.loss)
            stride = max(1, len(steps) // MAX_POINTS)
            steps = steps[::stride]
            ax.plot(
                steps,
                [t.loss[s] for s in steps],
                color=colors[t.arm],
                linewidth=1,
                alpha=0.9 if t.arm not in labelled else 0.45,
                label=t.arm if t.arm not in labelled else None,
            )
            labelled.add(t.arm)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss of the chosen trials (fainter: other seeds)", loc="left")
        if labelled:
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return svg(fig)


def x_key(keys: list[str], cells: list) -> str:
    """The regime map's x axis: the learning rate when it was swept, else the swept field with
    the most numeric values."""
    if "training.lr" in keys:
        return "training.lr"

    def numeric_values(k: str) -> int:
        values = {c.settings[k] for c in cells}
        return len(values) if all(isinstance(v, int | float) for v in values) else 0

    return max(keys, key=numeric_values)


def gap_bars(ax, cells: list, x: str, numeric: bool, color, label: str):
    """One method's differences against the x setting, each with its interval as a bar."""
    cells = sorted(cells, key=lambda c: c.settings[x] if numeric else str(c.settings[x]))
    return ax.errorbar(
        [c.settings[x] if numeric else str(c.settings[x]) for c in cells],
        [c.point for c in cells],
        yerr=[[c.point - c.low for c in cells], [c.high - c.point for c in cells]],
        fmt=".-",
        color=color,
        capsize=3,
        label=label,
    )


def regime_map(view) -> str:
    """The focus method's AURAC (log2) minus each other method's against the x setting (the
    learning rate), one panel per value of the other settings, each difference with its paired
    interval as an error bar and 0 (a tie) dashed. Each panel's line of a method is the SVG
    group id="regime-<panel>-<method>"."""
    cells = view.cells
    x = x_key(view.keys, cells)
    rest = [k for k in view.keys if k != x]
    panels = sorted({tuple(c.settings[k] for k in rest) for c in cells}, key=str)
    colors = palette(view.others)
    numeric = all(isinstance(c.settings[x], int | float) for c in cells)
    with plt.rc_context(STYLE):
        cols = min(len(panels), 2) or 1
        rows = math.ceil(len(panels) / cols) or 1
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(4.6 * cols, 3.2 * rows + 0.6),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        for i, panel in enumerate(panels):
            ax = axes[i // cols][i % cols]
            for other in view.others:
                shown = [
                    c
                    for c in cells
                    if c.other == other and tuple(c.settings[k] for k in rest) == panel
                ]
                bars = gap_bars(ax, shown, x, numeric, colors[other], f"{view.focus} − {other}")
                bars.lines[0].set_gid(f"regime-{i}-{other}")
            ax.axhline(0, linestyle="--", color="0.35", linewidth=1)
            if numeric and min(c.settings[x] for c in cells) > 0:
                ax.set_xscale("log")
            named = zip(rest, panel, strict=True)
            title = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in named)
            ax.set_title(title or view.name, loc="left", fontsize=9)
            ax.set_xlabel(x)
            if i % cols == 0:
                ax.set_ylabel("Δ AURAC (log2)")
        for j in range(len(panels), rows * cols):
            axes[j // cols][j % cols].set_visible(False)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
        fig.suptitle(
            f"Where {view.focus} wins: its AURAC minus each method's (bars: paired interval "
            "over test examples; above 0: it wins)",
            x=0.01,
            ha="left",
            fontsize=9,
        )
        return svg(fig)
