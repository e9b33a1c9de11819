"""The rank-accuracy curve of a method as a PNG, for its MLflow summary run."""

from __future__ import annotations

from pathlib import Path

from rankstudy.core.summaries import MethodSummary


def curve_figure(method: str, summary: MethodSummary, reference: dict | None, path: Path) -> Path:
    """Test score against rank (log2 axis), seeds as thin lines, the planted reference
    dashed when there is one."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for scores in summary.scores_by_seed.values():
        ax.plot(summary.ranks, scores, color="tab:blue", alpha=0.3, linewidth=1)
    ax.plot(
        summary.ranks,
        summary.scores,
        "o-",
        color="tab:blue",
        label=f"{method} (AURAC {summary.aurac_log2:.3f})",
    )
    if reference:
        ranks = sorted(int(k) for k in reference)
        ax.plot(
            ranks, [reference[str(k)] for k in ranks], "--", color="gray", label="planted reference"
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(summary.ranks, [str(r) for r in summary.ranks])
    ax.set_xlabel("rank")
    ax.set_ylabel("test score")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
