"""rankstudy: LoRA rank studies (LoRA grids, DyLoRA, MatryoshkaLoRA) scored by AURAC and cost."""

__version__ = "0.1.0"
