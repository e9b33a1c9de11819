"""The study's progress line: counts done and left, and an ETA from this process's own rate."""

from rankstudy.study.progress import StudyProgress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_the_rate_so_far_times_what_is_left():
    clock = Clock()
    progress = StudyProgress(search_total=6, clock=clock)
    clock.now += 120  # two trials ended in two minutes (two slots): 60 s a trial
    progress.line(1, 0, 12, settled=False)
    line = progress.line(2, 0, 12, settled=False)
    assert line.startswith("2 done (search 2/6, test passes 0/<=12), at most 16 left; 2m00s here")
    assert "ETA ~16m00s" in line  # 16 left x 60 s


def test_settled_counts_are_exact_and_the_last_line_has_no_eta():
    clock = Clock()
    progress = StudyProgress(search_total=2, clock=clock)
    clock.now += 30
    assert "ETA ~1m30s" in progress.line(2, 1, 4, settled=True)  # 3 left at 30 s each
    line = progress.line(2, 4, 4, settled=True)
    assert line == "6 done (search 2/2, test passes 4/4), 0 left; 30s here"


def test_durations_read_as_hours_minutes_seconds():
    assert [duration(s) for s in (0.4, 45, 750, 3900)] == ["0s", "45s", "12m30s", "1h05m"]
