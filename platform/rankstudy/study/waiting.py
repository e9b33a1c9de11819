"""Waiting for resources, said out loud and bounded.

Tune waits silently, and forever, for a trial's resources: an autoscaler scaling up, or other
jobs holding the slots. While trials wait and none runs, the study prints what they wait for
and what the cluster has free, every `every` seconds, and gives up after
`resources.wait_timeout_s` (a --resume continues once the cluster has room).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class WaitWatch:
    """Fed the trials at every step of Tune's loop (the study's Tune callback)."""

    def __init__(
        self,
        needs: str,
        timeout: float,
        log: Callable[[str], None],
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        free: Callable[[], str] | None = None,
    ) -> None:
        self.needs, self.timeout, self.log, self.every = needs, timeout, log, every
        self.clock, self.free = clock, free or free_resources
        self.since: float | None = None
        self.said = 0.0
        self.gave_up = False

    def step(self, trials) -> None:
        pending = sum(t.status == "PENDING" for t in trials)
        if not pending or any(t.status == "RUNNING" for t in trials):
            self.since = None
            return
        now = self.clock()
        if self.since is None:
            self.since, self.said = now, now
        waited = now - self.since
        if now - self.said >= self.every:
            self.said = now
            self.log(
                f"waiting for resources: {pending} trial(s) need {self.needs} each; free now: "
                f"{self.free()}; waited {waited:.0f} s of {self.timeout:.0f} s "
                f"(resources.wait_timeout_s)"
            )
        self.gave_up = waited > self.timeout


def free_resources() -> str:
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    return ", ".join(
        f"{k} {free.get(k, 0):g} of {total[k]:g}" for k in ("CPU", "GPU") if k in total
    )
