"""The study's storage: where trial directories (results, checkpoints, adapters) live for every
node, when the nodes share no disk.

A trial works in its local directory under the study's folder on the node that runs it, and
pushes what it wrote to the storage: each checkpoint as it is saved, the result at the end. A
trial that starts where its directory is not (a retry on another node, a test pass resuming
the chosen trial's final checkpoint, a Ray Train worker on another node) pulls it first, and the
driver reads results from the storage. The storage is a URI that pyarrow's filesystems open (s3://bucket/prefix,
gs://..., or a path on shared disk); without one, the study's folder is the storage itself and
nothing is copied (one machine, or a folder every node mounts at the same path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rankstudy.core.errors import InputError
from rankstudy.core.records import RESULT_FILE, TrialConfig
from rankstudy.storage.disk import MIN_FREE, free_bytes, mib

PROBE_SECONDS = 10.0  # how long a remote storage has to answer one lookup, before a study
_PROBE = """
import sys
from pyarrow import fs
filesystem, path = fs.FileSystem.from_uri(sys.argv[1])
filesystem.get_file_info(path)  # a prefix that is not there yet answers too
"""


def probe_storage(uri: str, seconds: float | None = None) -> str | None:
    """None when a remote storage answers a lookup of its prefix within `seconds`
    (PROBE_SECONDS), else what happened. In a child process, so that a client retrying for
    minutes, or a server that never answers, is cut off at the bound."""
    seconds = PROBE_SECONDS if seconds is None else seconds
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, uri], capture_output=True, text=True, timeout=seconds
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {seconds:g} s"
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"the lookup exited with {proc.returncode}"


def on_disk(uri: str | None) -> str | None:
    """The path on a mounted disk that a storage URI or path names (file:// or absolute), else
    None (an object store, or no storage)."""
    if uri and uri.startswith(("/", "file://")):
        return uri.removeprefix("file://")
    return None


def check_writable(field: str, path: Path, must_exist: bool = False) -> None:
    """A local folder the study writes to: it (or, unless must_exist, the nearest folder above
    it) must be a folder this process can write, with room left; an InputError names the field."""
    probe = Path(path)
    if must_exist and not probe.is_dir():
        raise InputError(
            f"{field}: {path} is not an existing folder; a storage path must be a folder every "
            f"node sees (mount it, or create it)"
        )
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{field}: {probe} is a file, so no folder {path} can be made")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{field}: {probe} is not writable here")
    free = free_bytes(probe)
    if free < MIN_FREE:
        raise InputError(
            f"{field}: {probe} has {mib(free)} free; a study needs at least {mib(MIN_FREE)}"
        )


class TrialStorage:
    """uri: the storage (None: the study's folder is the storage). study_dir: the study's
    folder, as the driver names it. local_root: where this node keeps its working copy
    (default the study's folder; $RANKSTUDY_SCRATCH on a node with fast local disk)."""

    def __init__(
        self, uri: str | None, study_dir: str | Path, local_root: str | Path | None = None
    ) -> None:
        self.uri = uri or None  # an empty $RANKSTUDY_STORAGE is none
        self.study_dir = Path(study_dir)
        self.local_root = Path(local_root) if self.uri and local_root else self.study_dir
        self._fs = None

    @property
    def shared(self) -> bool:
        """True when trials write straight into the storage (no copies)."""
        return self.uri is None

    def path_of(self, name: str) -> str:
        """A folder of the study in the storage, as Ray Tune and Ray Train take it."""
        return str(self.study_dir / name) if self.shared else f"{self.uri.rstrip('/')}/{name}"

    def tune_location(self) -> tuple[str, object | None]:
        """Where Ray Tune keeps the study's search state, and the pyarrow file system to reach
        it: on a local or shared disk, one that replaces each file whole (a full disk or a kill
        mid-save leaves the previous state, rankstudy.storage.atomic_fs); else the URI's own."""
        path = self.path_of("tune")
        if (local := on_disk(path)) is not None:
            from rankstudy.storage.atomic_fs import atomic_local_filesystem

            return local, atomic_local_filesystem()
        return path, None

    def local(self, path: str | Path) -> Path:
        """This node's working copy of a path of the study (the path itself without a
        storage)."""
        if self.shared:
            return Path(path)
        return self.local_root / Path(path).relative_to(self.study_dir)

    def _remote(self, local: Path) -> tuple[object, str]:
        from pyarrow import fs

        if self._fs is None:
            self._fs, self._base = fs.FileSystem.from_uri(self.uri)
        rel = Path(local).relative_to(self.local_root)
        return self._fs, f"{self._base.rstrip('/')}/{rel.as_posix()}"

    def push(self, local: Path) -> None:
        """Copy a file or folder of this node's working copy to its place in the storage."""
        if self.shared:
            return
        from pyarrow import fs

        remote_fs, remote = self._remote(local)
        folder = remote if Path(local).is_dir() else remote.rsplit("/", 1)[0]
        remote_fs.create_dir(folder, recursive=True)
        fs.copy_files(str(local), remote, destination_filesystem=remote_fs)

    def pull(self, local: Path) -> bool:
        """Copy a file or folder from the storage into this node's working copy; False when
        the storage does not hold it."""
        if self.shared:
            return Path(local).exists()
        from pyarrow import fs

        remote_fs, remote = self._remote(local)
        kind = remote_fs.get_file_info(remote).type
        if kind == fs.FileType.NotFound:
            return False
        folder = Path(local) if kind == fs.FileType.Directory else Path(local).parent
        folder.mkdir(parents=True, exist_ok=True)  # copy_files wants its destination's folder
        fs.copy_files(remote, str(local), source_filesystem=remote_fs)
        return True

    def read_text(self, path: str | Path) -> str:
        """A file of the study (named as the driver names it) as the storage holds it: the
        driver's view of every node."""
        if self.shared:
            return Path(path).read_text()
        text = self._remote_text(self.local(path))
        if text is None:
            raise FileNotFoundError(f"{path}: not in the storage {self.uri}")
        return text

    def read_json(self, path: str | Path) -> dict:
        return json.loads(self.read_text(path))

    def _remote_text(self, local: Path) -> str | None:
        from pyarrow import fs

        remote_fs, remote = self._remote(local)
        if remote_fs.get_file_info(remote).type == fs.FileType.NotFound:
            return None
        with remote_fs.open_input_stream(remote) as f:
            return f.read().decode()

    def pull_latest_checkpoint(self, out_dir: Path) -> None:
        """Before a trial starts (out_dir: its working copy): its result and its latest
        checkpoint from the storage, unless this node holds that same checkpoint (earlier
        steps are not needed to resume)."""
        if self.shared:
            return
        self.pull(out_dir / RESULT_FILE)
        latest = out_dir / "checkpoints" / "latest"
        tag = self._remote_text(latest)
        if tag is None or (latest.is_file() and latest.read_text() == tag):
            return
        self.pull(latest.parent / tag.strip())
        latest.write_text(tag)


def trial_storage(config: TrialConfig) -> TrialStorage:
    """The storage a trial config names (a trial outside a study has none), with this node's
    working copies under its own $RANKSTUDY_SCRATCH: each process works it out where it runs,
    since a Ray Train worker may be on another node than the trial that started it."""
    return TrialStorage(
        config.storage,
        config.study_dir or config.out_dir,
        os.environ.get("RANKSTUDY_SCRATCH"),
    )


def publish_checkpoint(storage: TrialStorage, ckpt_dir: Path, step: int, rank: int, world: int):
    """After every rank saved checkpoint `step`: each node pushes the files it wrote (ZeRO
    shards are per rank), then rank 0 moves the storage's `latest` to it, so a reader never
    finds a `latest` that names a half-pushed step."""
    if storage.shared:
        return
    import torch.distributed as dist

    if world > 1:
        dist.barrier()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        storage.push(ckpt_dir / f"step{step}")
    if world > 1:
        dist.barrier()
    if rank == 0:
        storage.push(ckpt_dir / "latest")
