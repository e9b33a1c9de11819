"""The P-parameterized adapter: one layer serves LoRA, DyLoRA and MatryoshkaLoRA.

Nothing here knows about Ray, DeepSpeed or MLflow.
"""

from rankstudy.adapters.attach import (
    adapter_layers,
    adapters_off,
    attach_adapters,
    get_schedule,
    powers_of_two,
    set_rank,
)
from rankstudy.adapters.io import (
    export_peft,
    load_adapters,
    read_adapter_metadata,
    save_adapters,
)
from rankstudy.adapters.layer import NestedLoRA
from rankstudy.adapters.schedules import (
    INFERENCE_RULES,
    METHODS,
    SCALINGS,
    RankSchedule,
    matryoshka_p,
    rank_scale,
)

__all__ = [
    "INFERENCE_RULES",
    "METHODS",
    "SCALINGS",
    "NestedLoRA",
    "RankSchedule",
    "adapter_layers",
    "adapters_off",
    "attach_adapters",
    "export_peft",
    "get_schedule",
    "load_adapters",
    "matryoshka_p",
    "powers_of_two",
    "rank_scale",
    "read_adapter_metadata",
    "save_adapters",
    "set_rank",
]
