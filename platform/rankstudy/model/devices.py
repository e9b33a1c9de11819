"""What this machine's GPUs can do, against what the spec asks of them.

A spec may ask for bf16 or flash attention on GPUs that have neither (a V100 computes no bf16;
flash-attn needs its package and an Ampere or later GPU). The driver judges on its own GPUs
before any compute; a driver without GPUs (a CPU head node) cannot see the workers' ones, and
each trial judges on its node as it starts, failing once with the same message.
"""

from __future__ import annotations

import importlib.util

from rankstudy.core.spec import StudySpec

AMPERE = (8, 0)  # the first compute capability with bf16 and flash attention 2


def device_problem(spec: StudySpec) -> str | None:
    """What this machine's GPU cannot do of what the spec asks, said by its field; None when it
    can, or when the spec's trials do not run on this machine's GPUs."""
    if not spec.resources.use_gpu:
        return None  # (and planning a CPU study imports no torch)
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    capability = torch.cuda.get_device_capability()
    here = f"this machine's {name} is compute capability {capability[0]}.{capability[1]}"
    asked = spec.deepspeed.precision
    if asked in ("bf16", "bf16_pure") and not torch.cuda.is_bf16_supported():
        return (
            f"deepspeed.precision: {asked} needs a GPU that computes in bf16 (compute "
            f"capability 8.0 or later); {here}: use fp32, or auto (which is fp32 there)"
        )
    if spec.model.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            return (
                "model.attn_implementation: flash_attention_2 needs the flash-attn package, "
                "which is not installed here: pip install flash-attn, or use sdpa"
            )
        if capability < AMPERE:
            return (
                f"model.attn_implementation: flash_attention_2 needs compute capability 8.0 or "
                f"later; {here}: use sdpa"
            )
    return None
