"""The regime map: where the paper's method wins, and by how much.

A sweep crosses settings (learning rate, shift, A's initialisation, ...); each point is a whole
study whose verdict holds the paired interval of every AURAC difference (rankstudy.core.intervals).
The map is, for every point and every other method, AURAC(focus) - AURAC(other) on the log2
axis with that interval: positive and separated where the focus method (MatryoshkaLoRA under
its own rule, by default) really wins. Plain Python: the CLI prints it from the points' study
summaries, the report draws it from each point's verdict in MLflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rankstudy.core.summaries import SUMMARY_FILE, StudySummary, read_study_summary
from rankstudy.core.verdict import p_better, pair_gap
from rankstudy.core.verdict_records import Verdict

FOCUS = "matryoshka"  # the paper's method, served by the paper's rule
REGIME_MAP_FILE = "regime_map.json"


@dataclass(frozen=True)
class MapCell:
    """focus - other at one point of the sweep: the AURAC (log2) difference, its paired
    interval over test examples, and the share of resamples in which focus is ahead."""

    settings: dict[str, object]  # swept spec field -> this point's value
    focus: str
    other: str
    point: float
    low: float
    high: float
    p_better: float

    @property
    def separated(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def verdict(self) -> str:
        """ "wins", "loses" or "tied" (the interval contains 0)."""
        if not self.separated:
            return "tied"
        return "wins" if self.point > 0 else "loses"


def point_cells(settings: dict, verdict: Verdict | None, focus: str = FOCUS) -> list[MapCell]:
    """The map's cells of one point, from its study's verdict (none without one, or without
    the focus method)."""
    if verdict is None or focus not in verdict.intervals.methods:
        return []
    intervals = verdict.intervals
    cells = []
    for other in intervals.methods:
        if other == focus:
            continue
        gap = pair_gap(intervals, focus, other)
        cells.append(
            MapCell(
                dict(settings),
                focus,
                other,
                gap.point,
                gap.low,
                gap.high,
                p_better(intervals, focus, other),
            )
        )
    return cells


def sweep_cells(
    points: list[tuple[dict, StudySummary | None]], focus: str = FOCUS
) -> list[MapCell]:
    """Every cell of a sweep; points: (settings, that point's study summary or None)."""
    return [
        c
        for settings, summary in points
        for c in point_cells(settings, summary and summary.verdict, focus)
    ]


def folder_summaries(folders: list[Path]) -> list[StudySummary | None]:
    """Each point folder's study_summary.json, None where the point has not finished."""
    return [read_study_summary(f) if (f / SUMMARY_FILE).exists() else None for f in folders]


def write_regime_map(out: Path, cells: list[MapCell], points: int) -> Path:
    """<out>/regime_map.json: every cell, and how many of the sweep's points it covers."""
    path = out / REGIME_MAP_FILE
    done = len({json.dumps(c.settings, sort_keys=True) for c in cells})
    body = {"focus": cells[0].focus if cells else FOCUS, "points": points, "finished": done}
    body["cells"] = [asdict(c) | {"verdict": c.verdict} for c in cells]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)  # atomic: a kill never leaves half a file
    return path


def map_table(cells: list[MapCell]) -> str:
    """One line per point, one column per other method: focus - other [interval], marked
    + (focus ahead, separated), - (behind, separated) or = (tied)."""
    if not cells:
        return "regime map: no point holds a verdict with the focus method"
    others = list(dict.fromkeys(c.other for c in cells))
    keys = list(cells[0].settings)
    by_point: dict[str, dict[str, MapCell]] = {}
    for c in cells:
        by_point.setdefault(json.dumps(c.settings), {})[c.other] = c
    mark = {"wins": "+", "loses": "-", "tied": "="}
    lines = [
        f"regime map: AURAC log2 of {cells[0].focus} minus each method, paired 95% interval "
        "(+ ahead, - behind, = not separated)",
        "".join(f"{k.rsplit('.', 1)[-1]:>11}" for k in keys) + "".join(f"{o:>27}" for o in others),
    ]
    for point, row in by_point.items():
        settings = json.loads(point)
        cells_text = [
            f"{c.point:+.3f} [{c.low:+.3f},{c.high:+.3f}]{mark[c.verdict]}"
            if (c := row.get(o))
            else "not scored"
            for o in others
        ]
        lines.append(
            "".join(f"{settings[k]!s:>11}" for k in keys) + "".join(f"{t:>27}" for t in cells_text)
        )
    return "\n".join(lines)


def tally(cells: list[MapCell]) -> dict[str, dict[str, int]]:
    """other -> how many points the focus method wins, loses and ties against it."""
    out: dict[str, dict[str, int]] = {}
    for c in cells:
        counts = out.setdefault(c.other, {"wins": 0, "loses": 0, "tied": 0})
        counts[c.verdict] += 1
    return out
