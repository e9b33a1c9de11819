"""A study's verdict as typed records: the intervals of every method and pair of methods, and
what to deploy. rankstudy.core.intervals makes them, rankstudy.core.verdict assembles and reads
them; the study summary keeps the verdict ("verdict" of study_summary.json) and the study run
holds it as verdict.json.

Their JSON is, key for key and in the same order, the dicts they replace, so verdicts written
before them read and write back the same: ranks and seeds as text keys, and the one-seed note
absent, not null, when there is none.

numpy-free, torch-free and MLflow-free: the summary, the tracker and the report read them.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from rankstudy.core.records import _Record


class _Verdict(_Record):
    model_config = ConfigDict(frozen=True)


class Interval(_Verdict):
    """A point estimate and its percentile interval."""

    point: float
    low: float
    high: float

    @property
    def separated(self) -> bool:
        """The interval excludes 0: for a difference, the two sides really differ."""
        return self.low > 0 or self.high < 0

    def negated(self) -> Interval:
        """The interval of minus the estimate: b - a's from a - b's."""
        return Interval(point=-self.point, low=-self.high, high=-self.low)


class CurveIntervals(_Verdict):
    """A curve's intervals, a method's or a difference of two methods': its AURAC on both rank
    axes and its score at each rank."""

    aurac_log2: Interval
    aurac_linear: Interval
    scores: dict[int, Interval]  # rank -> the score's interval, in rank order


class PairIntervals(CurveIntervals):
    """a - b, paired, and how often a is ahead."""

    p_better: float  # share of resamples in which a's AURAC (log2) beats b's (ties count half)


class StudyIntervals(_Verdict):
    """How the intervals were drawn, each method's intervals, and each pair's difference."""

    scheme: str  # the bootstrap, in words (rankstudy.core.intervals.SCHEME)
    resamples: int
    seed: int  # the bootstrap's
    confidence: float
    seeds: list[int]  # the study's seeds, each with its own test examples
    examples: dict[int, int]  # seed -> how many test examples it has
    methods: dict[str, CurveIntervals]
    pairs: dict[str, dict[str, PairIntervals]]  # pairs[a][b]: a - b, a before b in method order
    ranks: list[int]  # the ranks every method scored
    # what the intervals leave out (one seed: the variation between seeds); absent in JSON
    note: str | None = Field(None, exclude_if=lambda note: note is None)

    @property
    def best(self) -> str:
        """The method with the highest AURAC (log2) point, the first in method order on a tie:
        the one every other is compared with."""
        return max(self.methods, key=lambda m: self.methods[m].aurac_log2.point)


class MethodAtRank(_Verdict):
    """A method at one rank, and its test score's interval there."""

    method: str
    rank: int
    score: Interval


class Recommendation(MethodAtRank):
    """What to deploy (rankstudy.core.intervals.recommend): the smallest rank at which the best
    method there is tied with the best (method, rank) of the study, and the cheapest method tied
    at that rank."""

    cost: float  # its training FLOPs
    best: MethodAtRank  # the best (method, rank) of the study
    candidates: list[str]  # the methods tied at that rank, in method order
    per_method: dict[str, int]  # method -> its own smallest rank tied with its best rank
    tolerance: float  # scores this close count as tied


class Verdict(_Verdict):
    """Which differences between methods are real, and which method and rank to deploy."""

    intervals: StudyIntervals
    recommendation: Recommendation

    def wire(self) -> dict:
        """The JSON object verdict.json (and the summary's "verdict") holds."""
        return self.model_dump(mode="json")
