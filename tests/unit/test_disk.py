"""A full disk told apart from other failures, the driver's watch that stops a study on it, and
the file system Tune's state is written through (a failed write keeps the previous file)."""

import errno
import pickle
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.exceptions
from pyarrow import fs

from rankstudy.storage import disk
from rankstudy.storage.atomic_fs import atomic_local_filesystem
from rankstudy.storage.disk import DiskWatch, disk_full, full_disk_error


class WorkerGroupError(Exception):
    """The shape of Ray Train's: each worker's own error."""

    def __init__(self, failures: dict) -> None:
        super().__init__("workers failed")
        self.worker_failures = failures


def chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as e:
            raise outer from e
    except Exception as e:
        return e


@pytest.mark.parametrize(
    "error,full",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OSError(errno.ENOENT, "No such file or directory"), False),
        (RuntimeError("PytorchStreamWriter failed writing file data/0"), False),
        (chained(RuntimeError("checkpoint failed"), OSError(errno.ENOSPC, "x")), True),
        (chained(RuntimeError("checkpoint failed"), KeyError("step")), False),
        (sqlite3.OperationalError("database or disk is full"), True),
        (RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "..." })'), True),
        (ray.exceptions.RayTaskError("f", "tb", OSError(errno.ENOSPC, "x")), True),
        (WorkerGroupError({0: ValueError("bad"), 1: OSError(errno.ENOSPC, "x")}), True),
        (WorkerGroupError({0: ValueError("bad")}), False),
        ("Failure # 1\nOSError: [Errno 28] No space left on device: /x has 0 MiB free", True),
        ("Failure # 1\nKeyError: 'out_dir'", False),
    ],
)
def test_a_full_disk_is_told_apart_in_every_shape_it_comes_in(error, full):
    assert disk_full(error) is full


def test_a_trials_full_disk_error_survives_the_trip_to_the_driver(tmp_path):
    error = full_disk_error(tmp_path, RuntimeError("unexpected pos 128 vs 0"))
    back = pickle.loads(pickle.dumps(error))  # Ray pickles what a trial raises
    assert back.errno == errno.ENOSPC and disk_full(back)
    assert f"{tmp_path} has " in str(back) and "MiB free on the trial's node" in str(back)
    assert "RuntimeError: unexpected pos 128 vs 0" in str(back)


def test_the_watch_stops_the_study_once_a_folder_it_writes_is_short_of_space(tmp_path, monkeypatch):
    stops = []
    previous = signal.signal(signal.SIGINT, lambda *_: stops.append("SIGINT"))
    now = [0.0]
    try:
        watch = DiskWatch([tmp_path / "out", tmp_path / "store"], every=5, clock=lambda: now[0])
        free = {"out": 10 * 2**30}
        usage = lambda path: SimpleNamespace(free=free.get(Path(path).name, 3 * 2**20))  # noqa: E731
        monkeypatch.setattr(disk.shutil, "disk_usage", usage)
        (tmp_path / "out").mkdir()
        (tmp_path / "store").mkdir()
        free["store"] = 10 * 2**30
        watch.poll()
        assert watch.check(KeyError("a bug")) is False and not stops  # room, and not a disk
        free["store"] = 3 * 2**20
        now[0] = 4.0
        watch.poll()  # within `every`: not looked at yet
        assert watch.reason is None and not stops
        now[0] = 5.0
        watch.poll()
        assert watch.reason == f"{tmp_path / 'store'} has 3 MiB free (a study needs 64 MiB)"
        assert stops == ["SIGINT"]  # Tune's own stop, once
        assert watch.check() is True and stops == ["SIGINT"]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_watch_stops_on_a_trials_full_disk_elsewhere(tmp_path):
    stops = []
    previous = signal.signal(signal.SIGINT, lambda *_: stops.append("SIGINT"))
    try:
        watch = DiskWatch([tmp_path])
        text = (
            "Failure # 2\nTraceback...\nOSError: [Errno 28] No space left on device: /n has 0 MiB"
        )
        assert watch.check(text) is True and stops == ["SIGINT"]
        assert watch.reason == "OSError: [Errno 28] No space left on device: /n has 0 MiB"
    finally:
        signal.signal(signal.SIGINT, previous)


WRITE = """
import resource, signal, sys
from pathlib import Path
from pyarrow import fs
from rankstudy.storage.atomic_fs import atomic_local_filesystem
source, dest = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
try:
    fs.copy_files(source, dest, destination_filesystem=atomic_local_filesystem())
except OSError as e:
    print("failed:", e)
"""


def test_a_write_cut_short_keeps_the_previous_file_whole(tmp_path):
    source, dest = tmp_path / "state.json", tmp_path / "storage" / "state.json"
    dest.parent.mkdir()
    dest.write_text('{"trials": "before"}')
    source.write_bytes(b"x" * (4 * 2**20))  # larger than the process may write
    proc = subprocess.run(
        [sys.executable, "-c", WRITE, str(source), str(dest)], capture_output=True, text=True
    )
    assert proc.stdout.startswith("failed:"), proc.stdout + proc.stderr
    assert dest.read_text() == '{"trials": "before"}'  # not a truncated new one
    assert [p.name for p in dest.parent.iterdir()] == ["state.json"]  # nothing left beside it
    (dest.parent / "state.json.partial-killed0").write_text("{")  # as a kill mid-write leaves

    source.write_text('{"trials": "after"}')
    subprocess.run([sys.executable, "-c", WRITE, str(source), str(dest)], check=True)
    assert dest.read_text() == '{"trials": "after"}'
    assert [p.name for p in dest.parent.iterdir()] == ["state.json"]  # no partial copy left


def test_tunes_file_system_travels_to_trial_actors_and_reads_back(tmp_path):
    filesystem = pickle.loads(pickle.dumps(atomic_local_filesystem()))
    with filesystem.open_output_stream(str(tmp_path / "a.json")) as f:
        f.write(b"{}")
    filesystem.copy_file(str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    with filesystem.open_input_stream(str(tmp_path / "b.json")) as f:
        assert f.read() == b"{}"
    names = sorted(i.base_name for i in filesystem.get_file_info(fs.FileSelector(str(tmp_path))))
    assert names == ["a.json", "b.json"]
