"""A disk that fills up while a study runs: telling a failure to be one, and the stop that
names the folder and its free space.

A full disk is not the trial's fault and a retry cannot fix it while the disk stays full, nor
should the trial be kept as failed: the study stops as Ctrl-C stops it (every finished trial
kept, the state file written atomically or not at all), and `--resume`, once space is freed,
runs what was cut off from its last checkpoint to the results an uninterrupted run has.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

MIN_FREE = 64 * 2**20  # checkpoints of adapters and their optimizer state, MLflow, results
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how the libraries that write for a study say it when they do not raise OSError: torch and
# safetensors (Rust's StorageFull), sqlite (through SQLAlchemy and MLflow)
FULL_TEXTS = (
    os.strerror(errno.ENOSPC).lower(),
    os.strerror(errno.EDQUOT).lower(),
    "storagefull",
    "database or disk is full",
)


def disk_full(error: BaseException | str | None) -> bool:
    """Whether an error (or its text, as Tune keeps a trial's) is a full disk: an OSError of
    ENOSPC or EDQUOT anywhere in its chain, in a remote cause or a Ray Train worker's."""
    seen: set[int] = set()
    todo: list[object] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        if any(text in str(e).lower() for text in FULL_TEXTS):
            return True
        if isinstance(e, BaseException):
            workers = getattr(e, "worker_failures", None)
            todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
            todo += [getattr(e, "controller_failure", None)]
            todo += list(workers.values()) if isinstance(workers, dict) else []
    return False


def free_bytes(path: str | Path) -> int:
    """Free space where `path` is (or would be made: its nearest existing folder)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def short_of_space(folders: Iterable[Path]) -> tuple[Path, int] | None:
    """The first folder with less than MIN_FREE free, and what it has."""
    for folder in folders:
        free = free_bytes(folder)
        if free < MIN_FREE:
            return folder, free
    return None


def mib(free: int) -> str:
    return f"{free / 2**20:.0f} MiB"


def full_disk_error(folder: Path, why: BaseException) -> OSError:
    """What a trial raises when its disk filled up: ENOSPC, naming the folder and its free
    space on the trial's node (the driver sees the text; the node's disk it cannot see)."""
    return OSError(
        errno.ENOSPC,
        f"{os.strerror(errno.ENOSPC)}: {folder} has {mib(free_bytes(folder))} free on the "
        f"trial's node ({type(why).__name__}: {str(why)[:200]})",
    )


class DiskWatch:
    """The driver's watch on the disks a study writes (folders), fed by the study's Tune
    callback: every `every` seconds, and whenever a trial fails, it looks at their free space
    (and at why the trial failed); once a disk is full it stops the study, as Ctrl-C does."""

    def __init__(
        self,
        folders: list[Path],
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folders, self.every, self.clock = folders, every, clock
        self.looked = clock()
        self.reason: str | None = None  # why the study stopped, once it did

    def full(self, error: BaseException | str | None = None) -> str | None:
        """What is full, if a folder is short of space or the error is a full disk."""
        short = short_of_space(self.folders)
        if short:
            return f"{short[0]} has {mib(short[1])} free (a study needs {mib(MIN_FREE)})"
        if disk_full(error):
            lines = [line for line in str(error).splitlines() if disk_full(line)]
            return (lines[-1] if lines else str(error)).strip()[:400]
        return None

    def poll(self) -> None:
        if self.reason is None and self.clock() - self.looked >= self.every:
            self.looked = self.clock()
            self.check()

    def check(self, error: BaseException | str | None = None) -> bool:
        """Stop the study if a disk is full; True once it is stopping."""
        if self.reason is None and (why := self.full(error)):
            self.reason = why
            os.kill(os.getpid(), signal.SIGINT)  # Tune's own stop: resumable, trials kept
        return self.reason is not None


def full_stop(why: str, out_dir: Path) -> str:
    """The study's last words when a disk filled up."""
    return (
        f"the study stopped: a disk it writes is full ({why}). The state file and every "
        f"finished trial are kept; free space, then continue with --resume --out {out_dir} "
        f"(and the same --spec and --set)"
    )
