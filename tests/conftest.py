"""Shared fixtures: tiny models built locally, one torch thread (2-core machines)."""

import pytest
import torch

torch.set_num_threads(1)

# Module names each family's adapters target in the tests.
TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj"],
}


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
