"""A local file system for Ray Tune's state on which every file is replaced whole or not at all.

Tune saves its experiment state (trials, searcher) by copying files into the storage path;
on a local disk a copy cut short, by a full disk or a kill, leaves a truncated state file that
a restore then reads as a different experiment (trials without their config). Here each file
is written beside its path and moved onto it once complete, so the storage keeps the previous
whole copy until a new one is. A partial copy a kill left behind (no cleanup runs then) is
removed by the next complete write of its path. Object stores (S3, GCS) already publish an
object only once its upload completes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import uuid

import pyarrow
from pyarrow import fs


class _Replacing:
    """A file written beside `path` and moved onto it on close, unless a write failed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
        self.file = open(self.partial, "wb")  # noqa: SIM115 (closed by close())
        self.failed = False

    @property
    def closed(self) -> bool:
        return self.file.closed

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.file.tell()

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except BaseException:
            self._abandon()
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """A write failed: the file can never be complete, so it goes now, not whenever the
        caller (pyarrow's copy, which drops the stream unclosed) lets it be collected."""
        self.failed = True
        with contextlib.suppress(OSError):
            self.close()

    def __del__(self) -> None:
        if not self.file.closed:  # dropped unclosed (a copy that raised): never complete
            self.failed = True
            with contextlib.suppress(Exception):
                self.close()

    def close(self) -> None:
        if self.file.closed:
            return
        try:
            self.file.close()  # the last buffered bytes: a full disk may refuse them here
        except BaseException:
            self.failed = True
            raise
        finally:
            if self.failed:
                with contextlib.suppress(OSError):
                    os.unlink(self.partial)
            else:
                os.replace(self.partial, self.path)
                for stale in glob.glob(f"{glob.escape(self.path)}.partial-*"):
                    with contextlib.suppress(OSError):  # another cleanup may be there first
                        os.unlink(stale)


class AtomicLocalFiles(fs.FileSystemHandler):
    """pyarrow's LocalFileSystem, but for how a file is written (_Replacing)."""

    def __init__(self) -> None:
        self.local = fs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicLocalFiles)

    def equals(self, other) -> bool:
        return self == other

    def get_type_name(self) -> str:
        return "rankstudy-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[fs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: fs.FileSelector) -> list[fs.FileInfo]:
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("rankstudy never empties a file system's root")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with (
            self.local.open_input_stream(src) as source,
            self.open_output_stream(dest, None) as sink,
        ):
            while chunk := source.read(2**20):
                sink.write(chunk)

    def open_input_stream(self, path: str):
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_Replacing(path), mode="w")

    def open_append_stream(self, path: str, metadata):
        return self.local.open_append_stream(path)


def atomic_local_filesystem() -> fs.FileSystem:
    return fs.PyFileSystem(AtomicLocalFiles())
