"""Bad inputs more than one test file runs: a small valid spec, and overrides the tiny model
cannot take, each with the start of the message that refuses it."""

import json

from studies import ROOT

# hidden 32, 4 heads of 8, 2 key/value heads: q_proj 32x32, v_proj 32x16
SPEC = {
    "name": "bad",
    "model": {"tiny": {"hidden": 32, "layers": 1, "heads": 4, "intermediate": 64}},
    "task": {"kind": "planted", "planted_rank": 4, "seq_len": 16, "train_size": 64},
    "adapters": {
        "max_rank": 8,
        "train_ranks": [1, 2, 4, 8],
        "target_modules": ["q_proj", "v_proj"],
    },
    "training": {"steps": 4, "micro_batch_size": 8, "checkpoint_every": 2, "log_every": 2},
    "methods": ["matryoshka"],
    "search": {"trials_per_arm": 1},
}
JSONL = {"kind": "jsonl", "train": str(ROOT / "README.md"), "max_length": 128}

MODEL_FIT = [
    ("task.planted_rank=64", "task.planted_rank: 64 cannot be planted in model.tiny: the smallest"),
    ("adapters.max_rank=32", "adapters.max_rank: 32 exceeds the rank any adapter can reach"),
    ("task.seq_len=1024", "task.seq_len: 1024 tokens exceed the 512 positions of model.tiny"),
    ("model.tiny.max_positions=8", "task.seq_len: 16 tokens exceed the 8 positions of model.tiny"),
    (
        f"task={json.dumps(JSONL)}",
        "task.max_length: 128 tokens exceed the 64 positions",
    ),
    ("adapters.target_modules=[c_attn]", "adapters.target_modules: 'c_attn' matches no linear"),
    ("adapters.target_modules=.*nothing.*", "adapters.target_modules: regex '.*nothing.*' match"),
]
