"""Trial checkpoints: DeepSpeed's engine state (adapters, optimizer, scheduler; frozen base
excluded) plus the loop's own state, and the adapters alone as safetensors.

A restarted trial with the same config resumes from the latest checkpoint and ends with the
same adapters as an uninterrupted run: data order is a function of the step, and the random
states the loop uses (DyLoRA's draws, torch's RNG for dropout) are saved with it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from rankstudy.adapters import get_schedule, save_adapters


def latest_tag(ckpt_dir: Path) -> str | None:
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def save_checkpoint(engine, ckpt_dir: Path, step: int, loop_state: dict) -> None:
    """Every rank calls this (ZeRO shards are written per rank)."""
    schedule = get_schedule(engine.module)
    client_state = {
        "loop": loop_state,
        "dylora_rng": schedule.rng_state(),
        "torch_rng": torch.get_rng_state(),
    }
    engine.save_checkpoint(
        str(ckpt_dir), tag=f"step{step}", client_state=client_state, exclude_frozen_parameters=True
    )
    if engine.global_rank == 0:
        save_adapters(engine.module, ckpt_dir / f"step{step}" / "adapters.safetensors")


class CorruptCheckpoint(RuntimeError):
    """The latest checkpoint cannot be read; it was moved aside, so the next attempt starts
    the trial from step 0 instead of failing on it again."""


def load_checkpoint(engine, ckpt_dir: Path) -> dict | None:
    """Restore the latest checkpoint into the engine; returns the loop state, or None."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    try:
        _, client_state = engine.load_checkpoint(str(ckpt_dir), load_module_strict=False)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        aside = ckpt_dir.with_name(f"{ckpt_dir.name}.corrupt-{tag}")
        if engine.global_rank == 0:
            ckpt_dir.replace(aside)
        raise CorruptCheckpoint(
            f"checkpoint {ckpt_dir / tag} cannot be read ({type(e).__name__}: "
            f"{str(e)[:200]}); moved it to {aside.name}: the trial's next attempt starts "
            f"from step 0"
        ) from e
    if client_state is None:
        return None
    get_schedule(engine.module).set_rng_state(client_state["dylora_rng"])
    torch.set_rng_state(client_state["torch_rng"])
    return client_state["loop"]
