"""How far a study is: one line per finished trial with the count done and left and an ETA for
the whole study, so a slow study never looks hung.

The count left is a bound: an arm's test passes are one per seed for each distinct trial its
inference rules choose, known only once its search ends, so every rule is counted as choosing
its own trial until then. The rate is this process's own (trials ended per wall second since it
started, all slots together), so a resumed study does not count the time it was down."""

from __future__ import annotations

import time
from datetime import datetime, timedelta


def duration(seconds: float) -> str:
    """Like 1h05m, 12m30s, 45s."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StudyProgress:
    def __init__(self, search_total: int, clock=time.monotonic) -> None:
        self.search_total = search_total
        self.clock = clock
        self.started = clock()
        self.ended_here = 0

    def line(self, search_done: int, tests_done: int, tests_total: int, settled: bool) -> str:
        """Called once per trial that ended in this process; counts are the study's own (a
        resumed study includes the trials of its earlier runs). settled: every arm's search
        has ended, so tests_total is exact rather than a bound."""
        self.ended_here += 1
        left = max(self.search_total - search_done, 0) + max(tests_total - tests_done, 0)
        elapsed = self.clock() - self.started
        head = (
            f"{search_done + tests_done} done (search {search_done}/{self.search_total}, "
            f"test passes {tests_done}/{tests_total if settled else f'<={tests_total}'}), "
            f"{'' if settled else 'at most '}{left} left"
        )
        if left == 0:
            return f"{head}; {duration(elapsed)} here"
        eta = elapsed / self.ended_here * left
        at = (datetime.now() + timedelta(seconds=eta)).strftime("%H:%M")
        return f"{head}; {duration(elapsed)} here, ETA ~{duration(eta)} (by {at})"
