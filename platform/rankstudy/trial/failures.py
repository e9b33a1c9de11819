"""Which failures of a trial a retry can fix.

A retry (Tune's, from the trial's last checkpoint) fixes what befell the trial: its process
killed, a worker or node lost, a connection or file system that failed for a moment, a
checkpoint that cannot be read (moved aside: the retry starts over). It cannot fix what the
trial's inputs or code do: bad data no check could see, a config or import error, a bug, a
diverged run. Those fail once, with their reason kept, instead of once per retry.
"""

from __future__ import annotations

import traceback
from pathlib import Path


def retry_can_fix(error: BaseException) -> bool:
    """Whether running the trial again, from its checkpoint, may end otherwise."""
    import ray.exceptions
    import torch.distributed

    from rankstudy.trial.checkpoint import CorruptCheckpoint

    workers = getattr(error, "worker_failures", None)  # Ray Train's WorkerGroupError
    if isinstance(workers, dict) and workers:
        # one worker's own error leaves the others failing on their lost peer: the first
        # kind decides
        return all(retry_can_fix(e) for e in workers.values())
    controller = getattr(error, "controller_failure", None)  # Ray Train's ControllerError
    if isinstance(controller, BaseException):
        return retry_can_fix(controller)
    if isinstance(error, ray.exceptions.RayTaskError):  # what the remote code raised
        return retry_can_fix(error.cause) if isinstance(error.cause, BaseException) else False
    lost = (ray.exceptions.RayError, torch.distributed.DistError, CorruptCheckpoint)
    return isinstance(error, (OSError, *lost))  # OSError: I/O, connections, timeouts


def failure_reason(error: BaseException) -> str:
    """What the study keeps of a failure a retry cannot fix: the error, where it was raised,
    and that it was not retried. The trial's own failures (lifecycle.TrialFailed) are their
    message."""
    from rankstudy.trial.lifecycle import TrialFailed

    if isinstance(error, TrialFailed):
        return str(error)
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (raised at {Path(frame.filename).name}:{frame.lineno}, in {frame.name})"
    return (
        f"{type(error).__name__}: {error}{where if frame else ''}; not retried: a retry "
        f"cannot fix it"
    )
